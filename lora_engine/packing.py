"""May a job train in a pack? One rule, torch-free: `Pack.check`, the worker and its claim ask it.

A pack (packed/) trains several jobs' adapters in one pass over one shared, frozen base, so a job
can join one only when

- its method trains an adapter and leaves the base as loaded (`methods.Method.packable`);
- one of the packed forwards takes its base and task (`pack_family`): BERT/RoBERTa classification
  and regression ("encoder"), Llama-family generation ("decoder");
- it does not evaluate during training (`eval_every`): a pack has no evaluation between steps,
  so the job would train on fewer rows and keep its last step instead of its best, unlike alone;
- it does not continue an adapter (`init_from`): its parent is loaded and verified on the solo path;
- it does not recompute activations (`gradient_checkpointing`): the packed forward keeps them;
- it runs on one device (`devices`): a job across several trains alone, on its own ranks;
- its base is not quantised (`quantize`): a pack shares one base, loaded in full precision.

What a particular pack adds (the same base model, one pooling, room and token budget) is
`Pack.check`'s; which layers the job's targets hit (LoRA on an embedding trains alone) is known
only once the targets meet the model, in `Pack.add`.
"""

from __future__ import annotations

from lora_engine.methods import BY_NAME

ENCODER_ARCHS = ("bert", "roberta")
DECODER_ARCHS = ("llama",)


def pack_family(arch: str | None, kind: str) -> str | None:
    """'encoder' / 'decoder': the packed forward a base of `arch` (its config's model_type) takes
    for a task of `kind` (catalog.KINDS); None when none does."""
    if arch in ENCODER_ARCHS and kind in ("classification", "regression"):
        return "encoder"
    if arch in DECODER_ARCHS and kind == "generation":
        return "decoder"
    return None


def refusal(*, method: str, arch: str | None, kind: str, evaluates: bool = False,
            continues_adapter: bool = False, recomputes: bool = False, devices: int = 1,
            quantize: str | None = None) -> str | None:
    """Why a job cannot train in a pack (a sentence for the user), or None when it can."""
    entry = BY_NAME.get(method)
    if entry is None:
        return f"unknown method {method!r}; allowed: {', '.join(BY_NAME)}"
    if not entry.packable:
        why = ("it changes the shared base weights" if entry.changes_base
               else "it trains no adapter" if entry.trains else "it trains nothing")
        allowed = ", ".join(n for n, m in BY_NAME.items() if m.packable)
        return f"method {method!r} cannot be packed ({why}); packable methods: {allowed}"
    if pack_family(arch, kind) is None:
        return (f"a {kind} job on a {arch or 'unknown'} base cannot be packed: packs take BERT/RoBERTa "
                "classification and regression, or Llama generation; train it alone")
    if evaluates:
        return ("a job that evaluates during training (eval_every, on by default with an auto budget) "
                "cannot be packed: train it alone")
    if continues_adapter:
        return "a job that continues an adapter (init_from) cannot be packed: train it alone"
    if recomputes:
        return ("a job with gradient_checkpointing cannot be packed (a pack keeps one base's "
                "activations for all its jobs): train it alone")
    if devices > 1:
        return f"a job across {devices} devices cannot be packed (a pack runs on one): it trains alone"
    if quantize is not None:
        return (f"a job on an {quantize}-quantised base cannot be packed (a pack shares one base in full "
                "precision): it trains alone")
    return None


def packable(*, method: str, arch: str | None, kind: str, evaluates: bool = False,
             continues_adapter: bool = False, recomputes: bool = False, devices: int = 1,
             quantize: str | None = None) -> str | None:
    """The packed forward ('encoder' / 'decoder') a job takes, or None when it trains alone."""
    if refusal(method=method, arch=arch, kind=kind, evaluates=evaluates,
               continues_adapter=continues_adapter, recomputes=recomputes, devices=devices,
               quantize=quantize) is not None:
        return None
    return pack_family(arch, kind)
