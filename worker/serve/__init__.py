"""`lorafleet serve`: the inference server (FastAPI + uvicorn; torch lives here, never in the API).

    app.py       the application: the API's auth, errors and body limit, these routes
    routes.py    /v1/chat/completions, /v1/completions, /v1/classify, /v1/models
    schemas.py   the request bodies, bounded
    prompts.py   how a request becomes an adapter's prompt (chat template or prompt template)
    batcher.py   the batching window: requests wait a few ms for company, one engine thread
    cache.py     the adapter LRU, bounded in bytes, sha256 verified on every load
    engine.py    the seam to the model code (`Engine`), and `PredictorEngine` (one model per adapter:
                 regression adapters and full fine-tunes)
    batched.py   `BatchedEngine` over lora_engine.serving (one resident base, mixed-adapter batches),
                 the engine app.make_engine runs
    metrics.py   Prometheus counters of the server
"""
