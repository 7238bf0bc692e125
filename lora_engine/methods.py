"""The training methods, one entry each: everything the engine needs to know about a method.

Pure data, no torch (the CLI and the worker read it). The layers, the injector, the recipe, the
base-model cache, the pack and re-evaluation ask an entry's fields; none of them tests a method's
name. A new LoRA variant is a new row here plus, where it initialises A and B its own way, an
initialiser in `layers.INITIALISERS` (PiSSA: the SVD of W0, and W0 replaced by its residual,
so `changes_base=True`), and where it trains them at rates of their own, a rule of
`recipe.LR_RULES` (LoRA+).

    method    adapter changes_base packable PEFT flags                  s     init   lr rule   lr ×  stored as
    lora      yes     no           yes      use_rslora=F, use_dora=F    α/r   -      -         1     itself
    rslora    yes     no           yes      use_rslora=T, use_dora=F    α/√r  -      -         1/√r  itself
    dora      yes     no           yes      use_dora=T                  α/r   -      -         1     itself
    loraplus  yes     no           yes      (those of lora)             α/r   -      loraplus  0.25  lora
    pissa     yes     yes          no       init_lora_weights="pissa"   α/r   pissa  -         0.4   lora, 2r
    olora     yes     yes          no       init_lora_weights="olora"   α/r   olora  -         0.4   lora, 2r
    full      no      yes          no       -                           -     -      -         -     -
    none      no      no           no       - (trains nothing)          -     -      -         -     -

(init_lora_weights is PEFT's default, True, for lora, rslora, dora and loraplus: they start A and
B as PEFT does; DoRA's variant is "dora".) "lr ×": the default learning rate over LoRA's for the
same task and base (`lr_factor`, `LR_FACTORS`; rsLoRA's 1/√r follows from its scaling).

`stored_as`: the adapter method the saved files describe, when it is not the method itself. LoRA+
trains a plain LoRA at other rates: its files are a LoRA's. PiSSA and OLoRA train on a residual
base (W0 − s·B0·A0): their files are converted as PEFT's `save_pretrained(...,
path_initial_model_for_weight_conversion=...)` does, to a plain LoRA of rank 2r on the untouched
base (A' = [A; A0], B' = [B, −B0], α' = 2α, so s·B'·A' = s·B·A − s·B0·A0, the update training
made), so serving, re-evaluation and PEFT alone use them on the shared base.

`changes_base`: a run writes into the base weights, so the base it ran on is no longer the base
that was loaded: a warm cache must not hand it out again, a pack (one base shared by every job)
cannot hold it, and re-evaluation cannot swap the next adapter onto it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

# How the low-rank update B·A is scaled. rsLoRA (Kalajdzievski 2023): α/√r keeps the update's
# scale stable as r grows, where α/r shrinks it.
SCALINGS = {"alpha/r": lambda alpha, r: alpha / r, "alpha/sqrt(r)": lambda alpha, r: alpha / math.sqrt(r)}
# PEFT's LoraConfig defaults for the flags that select a method: a flag an entry does not set
# has this value for it (and in a config that does not mention it, or gives it as null).
PEFT_FLAG_DEFAULTS: dict[str, object] = {"use_rslora": False, "use_dora": False, "init_lora_weights": True}
# The flags every adapter entry spells out (`Method.flags`); another, such as init_lora_weights,
# only where the entry sets it (a method that starts A and B its own way).
SPELLED_FLAGS = ("use_rslora", "use_dora")
# PEFT values that select the same method as another: init_lora_weights False (B random too) and
# "gaussian" (A Gaussian) only choose where a plain LoRA starts; what they train loads as one.
PEFT_FLAG_SYNONYMS: dict[str, tuple[tuple[object, object], ...]] = {
    "init_lora_weights": ((False, True), ("gaussian", True)),
}


@dataclass(frozen=True)
class Method:
    """One training method.

    adapter: trains LoRA layers over the base and saves a PEFT adapter (else the whole model is
      trained and saved, or, with `trains` False, nothing).
    changes_base: a run writes into the base weights (see the module doc).
    packable: may train in a pack beside other jobs on one shared base.
    peft_flags: the LoraConfig fields that select it (`use_rslora`, `use_dora`, and any other of
      `PEFT_FLAG_DEFAULTS` it sets, such as its own `init_lora_weights`); the adapter files, the
      layers and the checks of a loaded adapter all read the method from them.
    scaling: the rule of `SCALINGS` for s in y = W0·x + s·B·A·x.
    init: how A and B start (`layers.INITIALISERS`): "default" is PEFT's (A kaiming-uniform,
      B zero; embeddings: A zero, B normal), so an injected model computes its base until trained.
    variant: None, the update is s·B·A·x added to the base output (fusable across a pack's
      jobs); "dora": magnitude and direction (`layers.VARIANTS`).
    embeddings: may adapt embedding layers.
    lr_rule: None, every LoRA tensor at the spec's lr; "loraplus": B faster than A
      (`recipe.LR_RULES`).
    stored_as: the adapter method its saved files describe when not itself (see the module doc);
      `stored_rank_factor`: the stored rank over the trained one (2 for a converted PiSSA/OLoRA).
    lr_factor: its default learning rate over LoRA's measured one for the same task and base
      (`catalog.method_defaults`; rsLoRA's 1/√r comes from its scaling, not from here). A method
      whose update moves further per optimizer step than LoRA's, which starts at B = 0, needs a
      smaller rate (see `LR_FACTORS`).
    """

    name: str
    summary: str
    adapter: bool
    trains: bool = True
    changes_base: bool = False
    packable: bool = False
    peft_flags: Mapping[str, object] = field(default_factory=dict)
    scaling: str = "alpha/r"
    init: str = "default"
    variant: str | None = None
    embeddings: bool = True
    lr_rule: str | None = None
    stored_as: str | None = None
    stored_rank_factor: int = 1
    lr_factor: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "peft_flags", MappingProxyType(dict(self.peft_flags)))
        if self.packable and (self.changes_base or not self.adapter):
            raise ValueError(f"method {self.name!r}: only an adapter over an unchanged base can be packed "
                             "(a pack shares one base between its jobs)")
        unknown = sorted(set(self.peft_flags) - set(PEFT_FLAG_DEFAULTS))
        if unknown:  # a config is read through PEFT_FLAG_DEFAULTS' keys: another flag would never match
            raise ValueError(f"method {self.name!r}: {', '.join(unknown)} is no PEFT flag the table "
                             f"reads; known: {', '.join(PEFT_FLAG_DEFAULTS)} (a new one needs its PEFT "
                             "default there)")
        if self.adapter and (self.scaling not in SCALINGS or not self.peft_flags):
            raise ValueError(f"method {self.name!r}: an adapter method needs its PEFT flags and one of the "
                             f"scalings {', '.join(SCALINGS)}")
        if not self.lr_factor > 0 or (not self.adapter and self.lr_factor != 1.0):
            raise ValueError(f"method {self.name!r}: lr_factor must be > 0, and 1 for a method without an "
                             f"adapter, whose default is full fine-tuning's lr (got {self.lr_factor})")
        if not self.trains and (self.adapter or self.changes_base):
            raise ValueError(f"method {self.name!r} trains nothing: it has no adapter and leaves the base")

    @property
    def stored_method(self) -> str:
        """The adapter method its saved files describe (its own name unless `stored_as`)."""
        return self.stored_as or self.name

    def stored_rank(self, r: int) -> int:
        """The rank of the saved files for a run of rank `r`."""
        return r * self.stored_rank_factor

    def scale(self, alpha: float, r: int) -> float:
        """s for this method's update."""
        return SCALINGS[self.scaling](alpha, r)

    def flags(self) -> dict[str, object]:
        """The PEFT flags that select this method: `SPELLED_FLAGS` always, any other it sets."""
        return {**{k: PEFT_FLAG_DEFAULTS[k] for k in SPELLED_FLAGS}, **self.peft_flags}

    def config_flags(self) -> dict[str, object]:
        """Every method-selecting PEFT flag with its value for this method (adapter_config.json)."""
        return {**PEFT_FLAG_DEFAULTS, **self.peft_flags}


# Default lr over LoRA's (`Method.lr_factor`), measured on CoLA with MiniLM-L6 (r=8, all linear
# layers, the auto budget of 450 steps; bench/RESULTS.md, "LoRA+, PiSSA and OLoRA beside LoRA"):
# at LoRA's 1e-3 all three stayed at the majority class (MCC 0.00, LoRA 24.46). Their update moves
# further per step than LoRA's, whose B starts at zero: LoRA+ trains B 16x faster; PiSSA and OLoRA
# start A and B at W0's singular values / R factor, so one AdamW step (each entry ±lr) changes W
# 3.5x / 4.8x as much as LoRA's first step. LoRA+ at 2.5e-4 (B at 4e-3): MCC 22.35; PiSSA at
# 1e-4 / 2e-4 / 4e-4: 15.54 / 16.44 / 23.68; OLoRA at 2e-4 / 4e-4: 19.33 / 22.40 (one seed; one
# standard error of MCC there is ~3 points). PEFT's create_loraplus_optimizer advises about half
# of LoRA's rate for LoRA+; the PiSSA paper trains at full fine-tuning's.
LR_FACTORS = {"loraplus": 0.25, "pissa": 0.4, "olora": 0.4}

_LORA = "y = W0·x + b + s·B·A·x"
BY_NAME: dict[str, Method] = {m.name: m for m in (
    Method("lora", f"LoRA (Hu et al. 2021): {_LORA}, s = α/r", adapter=True, packable=True,
           peft_flags={"use_rslora": False, "use_dora": False}),
    Method("rslora", f"rank-stabilised LoRA (Kalajdzievski 2023): {_LORA}, s = α/√r", adapter=True,
           packable=True, peft_flags={"use_rslora": True, "use_dora": False}, scaling="alpha/sqrt(r)"),
    Method("dora", "DoRA (Liu et al. 2024): y = m/‖W0 + s·B·A‖_row ⊙ (W0·x + s·B·A·x) + b", adapter=True,
           packable=True, peft_flags={"use_rslora": False, "use_dora": True}, variant="dora",
           embeddings=False),
    Method("loraplus", f"LoRA+ (Hayou et al. 2024): {_LORA}, s = α/r, B trained at loraplus_lr_ratio × "
           "A's learning rate", adapter=True, packable=True,
           peft_flags={"use_rslora": False, "use_dora": False}, lr_rule="loraplus", stored_as="lora",
           lr_factor=LR_FACTORS["loraplus"]),
    Method("pissa", f"PiSSA (Meng et al. 2024): {_LORA} on W0's residual, A and B from W0's top r "
           "singular vectors", adapter=True, changes_base=True, peft_flags={"init_lora_weights": "pissa"},
           init="pissa", embeddings=False, stored_as="lora", stored_rank_factor=2,
           lr_factor=LR_FACTORS["pissa"]),
    Method("olora", f"OLoRA (Büyükakyüz 2024): {_LORA} on W0's residual, A and B from W0's QR "
           "decomposition", adapter=True, changes_base=True, peft_flags={"init_lora_weights": "olora"},
           init="olora", embeddings=False, stored_as="lora", stored_rank_factor=2,
           lr_factor=LR_FACTORS["olora"]),
    Method("full", "full fine-tuning: it trains the base model itself", adapter=False, changes_base=True),
    Method("none", "the untuned baseline: it trains nothing", adapter=False, trains=False),
)}

# The orders are those of the table (messages list them so).
NAMES = tuple(BY_NAME)
ADAPTER_METHODS = tuple(n for n, m in BY_NAME.items() if m.adapter)
PACKABLE_METHODS = tuple(n for n, m in BY_NAME.items() if m.packable)


def method(name: str) -> Method:
    """The entry of `name`; ValueError naming the methods there are."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; allowed: {', '.join(BY_NAME)}") from None


def adapter_method(name: str) -> Method:
    """The entry of adapter method `name`; ValueError naming the adapter methods there are."""
    entry = BY_NAME.get(name)
    if entry is None or not entry.adapter:
        adapters = [n for n, m in BY_NAME.items() if m.adapter]
        raise ValueError(f"unknown LoRA method {name!r}; allowed: {', '.join(adapters)}")
    return entry


def peft_flags(name: str) -> dict[str, object]:
    """{"use_rslora": ..., "use_dora": ..., and any other the entry sets}: an adapter method as
    PEFT's LoraConfig spells it (`Method.flags`)."""
    return adapter_method(name).flags()


def method_of_flags(**flags: object) -> str:
    """The adapter method PEFT's flags describe (flags left out have PEFT's defaults); ValueError
    for a combination that is no method of ours, e.g. use_rslora with use_dora (rsLoRA-scaled DoRA,
    which PEFT allows)."""
    given = {**PEFT_FLAG_DEFAULTS, **flags}
    for entry in BY_NAME.values():
        if entry.adapter and entry.config_flags() == given:
            return entry.name
    shown = " together with ".join(k if v is True else f"{k}={v!r}" for k, v in flags.items()
                                   if v != PEFT_FLAG_DEFAULTS.get(k))
    allowed = "; ".join(f"{n} ({', '.join(f'{k}={v}' for k, v in m.peft_flags.items())})"
                        for n, m in BY_NAME.items() if m.adapter)
    raise ValueError(f"{shown or 'these PEFT flags'} is no method we run (PEFT's rsLoRA-scaled DoRA, "
                     f"use_rslora with use_dora, is not supported); allowed: {allowed}")


def _read_flag(flag: str, value: object) -> object:
    """`value` of PEFT flag `flag` as the value it selects the same method as (PEFT_FLAG_SYNONYMS);
    compared with ==, so a value of any JSON type is safe."""
    return next((to for given, to in PEFT_FLAG_SYNONYMS.get(flag, ()) if value == given), value)


def peft_flag_values(flag: str) -> tuple[object, ...]:
    """The values of PEFT flag `flag` that some method of the table is read from: PEFT's default,
    its synonyms and the values the entries set (a config's null reads as the default)."""
    values = [PEFT_FLAG_DEFAULTS[flag], *(given for given, _ in PEFT_FLAG_SYNONYMS.get(flag, ())),
              *(m.peft_flags[flag] for m in BY_NAME.values() if flag in m.peft_flags)]
    return tuple(dict.fromkeys(values))


def method_of_peft_config(config: Mapping[str, object]) -> str:
    """The adapter method of a PEFT adapter_config.json: its method-selecting flags, each read as
    PEFT reads it (absent or null: the default; a synonym: the value it stands for)."""
    return method_of_flags(**{k: _read_flag(k, config[k]) for k in PEFT_FLAG_DEFAULTS
                              if config.get(k) is not None})
