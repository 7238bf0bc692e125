"""Merge adapter folders into a new adapter folder (PEFT format, lorafleet.json beside it).

    merge_adapter_folders([folder, ...], dest, how=..., weights=[...], density=..., seed=...)

Every parent is read strictly (`adapters.io.read_adapter_files`) and checked against the others
before anything is written: one method that is plain LoRA (DoRA's magnitude vector has no merge
in PEFT's arithmetic: refused), one rank unless `cat`, one kind, one task, one label set when
there are saved modules (a classifier's head), one shape per saved tensor. The new folder is
written atomically; its adapter_config.json is the first parent's with r = α = the new rank
(s = 1; PEFT keeps the first parent's rsLoRA flag, which would scale the merged B'A' by √r: not
copied), and lorafleet.json records the parents' ids, weights, method, density and seed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors.torch import save_file

from lora_engine.adapter_merging import (
    DEFAULT_DENSITY,
    RANDOM,
    merge_options_problems,
    method_problem,
    rank_problems,
)
from lora_engine.adapter_merging.combine import ModuleLora, average_modules, merge_module
from lora_engine.adapters.folder import CONFIG_NAME, WEIGHTS_NAME, AdapterMeta, write_adapter_meta, write_json
from lora_engine.adapters.io import AdapterFiles, read_adapter_files, read_adapter_meta, to_peft_key
from lora_engine.atomic import atomic_folder
from lora_engine.errors import AdapterError
from lora_engine.layers import is_lora_param
from lora_engine.methods import method as method_entry

# Our key names of a module's LoRA factors (adapters.io.from_peft_key), linear and embedding.
FACTORS = {".lora_A.weight": ".lora_B.weight", ".lora_embedding_A": ".lora_embedding_B"}
# What the eval of a merged adapter takes from its first parent's training spec: the same
# validation rows (and, for a custom task, the same data set).
EVAL_KEYS = ("task", "base_model", "eval_size", "dataset", "max_length")


@dataclass(frozen=True)
class Parent:
    folder: Path
    meta: AdapterMeta
    files: AdapterFiles

    @property
    def scaling(self) -> float:
        s = self.files.settings
        return method_entry(s.method).scale(s.lora_alpha, s.rank)


@dataclass(frozen=True)
class MergedAdapter:
    folder: Path
    rank: int
    trainable_params: int


def _natural(name: str) -> list:
    """Module names in model order for the architectures lorafleet targets (layer 2 before 10)."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def read_parents(folders: Sequence[str | os.PathLike]) -> list[Parent]:
    return [Parent(Path(f), read_adapter_meta(f), read_adapter_files(f)) for f in folders]


def parents_problems(parents: Sequence[Parent], how: str) -> list[str]:
    """Why these adapters cannot be merged together (empty: they can)."""
    problems = []
    for p in parents:
        why = method_problem(p.files.settings.method)
        if why:
            problems.append(f"{p.folder.name}: {why}")
    for what, get in (("base model", lambda p: p.meta.base_model), ("kind", lambda p: p.meta.kind),
                      ("task", lambda p: p.meta.task)):
        values = sorted({str(get(p)) for p in parents})
        if len(values) > 1:
            problems.append(f"the adapters differ in {what} ({', '.join(values)}): they must share it")
    problems += rank_problems([p.files.settings.rank for p in parents], how)
    heads = [{k: tuple(v.shape) for k, v in p.files.weights.items() if not is_lora_param(k)} for p in parents]
    if any(heads):
        if any(h != heads[0] for h in heads):
            problems.append("the adapters save different modules (heads of other shapes): they cannot be "
                            "averaged")
        labels = sorted({tuple(p.meta.label_names) for p in parents})
        if len(labels) > 1:
            shown = " / ".join(",".join(x) or "-" for x in labels)
            problems.append(f"the classifiers have different label sets ({shown}): their heads cannot be "
                            "averaged")
    targets = {type(p.files.config.get("target_modules")) for p in parents}
    if len(targets) > 1:
        problems.append("the adapters name their target modules in different forms (a list and a pattern)")
    return problems


def _target_modules(parents: Sequence[Parent]) -> list[str] | str:
    targets = [p.files.config["target_modules"] for p in parents]
    if isinstance(targets[0], str):
        unique = list(dict.fromkeys(targets))
        return unique[0] if len(unique) == 1 else "|".join(f"({t})" for t in unique)
    return sorted(set().union(*targets))


def merged_tensors(parents: Sequence[Parent], weights: Sequence[float], how: str, density: float,
                   generator: torch.Generator | None = None) -> tuple[dict[str, torch.Tensor], int]:
    """The merged adapter's tensors (our key names) and its rank."""
    ranks = [p.files.settings.rank for p in parents]
    new_rank = sum(ranks) if how == "cat" else ranks[0]
    modules: dict[tuple[str, str], None] = {}
    for p in parents:
        for key in p.files.weights:
            for a_suffix in FACTORS:
                if key.endswith(a_suffix):
                    modules[(key[: -len(a_suffix)], a_suffix)] = None
    out: dict[str, torch.Tensor] = {}
    for name, a_suffix in sorted(modules, key=lambda m: _natural(m[0])):
        a_key, b_key = name + a_suffix, name + FACTORS[a_suffix]
        present = [(ModuleLora(p.files.weights[a_key], p.files.weights[b_key], p.scaling), w)
                   for p, w in zip(parents, weights, strict=True) if a_key in p.files.weights]
        out[a_key], out[b_key] = merge_module(present, how, density, new_rank, generator)
    for key in parents[0].files.weights:
        if not is_lora_param(key):
            out[key] = average_modules([p.files.weights[key] for p in parents], weights)
    return out, new_rank


def merge_adapter_folders(folders: Sequence[str | os.PathLike], dest: str | os.PathLike, *, how: str,
                          weights: Sequence[float], density: float | None = None, seed: int = 0,
                          parent_ids: Sequence[str] = ()) -> MergedAdapter:
    """Write the merge of the adapters in `folders` to `dest` (atomically); AdapterError for
    adapters that cannot be merged or options that are wrong (nothing written then)."""
    parents = read_parents(folders)
    has_head = any(not is_lora_param(k) for k in parents[0].files.weights)
    problems = merge_options_problems(how, list(weights), density, len(parents), has_head) or \
        parents_problems(parents, how)
    if problems:
        raise AdapterError("cannot merge these adapters: " + "; ".join(problems))
    density = DEFAULT_DENSITY if density is None else float(density)
    generator = torch.Generator().manual_seed(int(seed)) if how in RANDOM else None
    tensors, rank = merged_tensors(parents, weights, how, density, generator)
    first = parents[0]
    config = {**first.files.config, "r": rank, "lora_alpha": rank, "use_rslora": False, "use_dora": False,
              "target_modules": _target_modules(parents), "rank_pattern": {}, "alpha_pattern": {},
              "init_lora_weights": True}
    spec = {k: v for k, v in (first.meta.spec or {}).items() if k in EVAL_KEYS}
    merge = {"how": how, "weights": [float(w) for w in weights], "parents": list(parent_ids),
             "density": density if how not in ("linear", "cat") else None,
             "seed": int(seed) if how in RANDOM else None}
    meta = replace(first.meta, method="lora", metrics={}, spec=spec or None, imported=False,
                   extra={**first.meta.extra, "merge": merge})
    with atomic_folder(Path(dest)) as tmp:
        write_json(tmp / CONFIG_NAME, config)
        save_file({to_peft_key(k): v.contiguous() for k, v in tensors.items()}, str(tmp / WEIGHTS_NAME),
                  metadata={"format": "pt"})
        write_adapter_meta(tmp, meta)
    return MergedAdapter(Path(dest), rank, sum(t.numel() for t in tensors.values()))
