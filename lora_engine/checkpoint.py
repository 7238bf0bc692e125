"""Training checkpoints for exact resume, with no pickle: tensors in safetensors, the rest in JSON.

A checkpoint is everything the next step depends on:

- the trainable parameters (LoRA matrices + head, or every weight for `full`),
- the optimizer state (AdamW's per-parameter moments and step counts, plus its param groups),
- the schedule position (the lr is a pure function of the step, so the step is its whole state),
- every RNG the step consumes (Python, NumPy, torch CPU and CUDA: dropout draws from them),
- the data position (the sampler's epoch/position/seed), and the run's counters.

Restoring all of it makes step k+1 after a resume compute exactly what it would have computed
without the interruption, so the loss curve and the final adapter are identical.

Layout: `<dir>/step-00000050/{tensors.safetensors, state.json}`. A checkpoint is written into a
temporary folder and renamed into place (rename is atomic on one file system), so a crash while
writing leaves the previous checkpoint intact and never a half-written one under a `step-` name.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from lora_engine.atomic import atomic_folder, private_dir
from lora_engine.errors import shown
from lora_engine.safe_json import loads

_STEP_DIR = re.compile(r"^step-(\d{8})$")
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    """One resumable training state. `meta` holds JSON scalars: counters, losses, spec digest."""

    step: int
    trainable: dict[str, torch.Tensor]
    optimizer: dict[str, Any]  # torch optimizer.state_dict() form
    rng: dict[str, Any]  # capture_rng_state() form
    sampler: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # e.g. the best weights so far


# --- RNG ------------------------------------------------------------------------------------------


def capture_rng_state() -> dict[str, Any]:
    """The state of every RNG a training step may draw from."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (np_state[0], np_state[1].copy(), int(np_state[2]), int(np_state[3]), float(np_state[4])),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- flattening into (tensors, json) --------------------------------------------------------------


def _flatten(ckpt: Checkpoint) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    for name, t in ckpt.trainable.items():
        tensors[f"param/{name}"] = t.detach().cpu().contiguous()
    for name, t in ckpt.extra.items():
        tensors[f"extra/{name}"] = t.detach().cpu().contiguous()

    opt_scalars: dict[str, dict[str, Any]] = {}
    for idx, per_param in ckpt.optimizer["state"].items():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{idx}/{key}"] = value.detach().cpu().contiguous()
            else:
                opt_scalars.setdefault(str(idx), {})[key] = value

    rng = ckpt.rng
    tensors["rng/torch"] = rng["torch"].cpu()
    for i, s in enumerate(rng["cuda"]):
        tensors[f"rng/cuda/{i}"] = s.cpu()
    np_name, np_keys, np_pos, np_has_gauss, np_cached = rng["numpy"]
    # safetensors has no uint32 for torch everywhere: the keys are < 2**32, int64 holds them exactly.
    tensors["rng/numpy_keys"] = torch.from_numpy(np.asarray(np_keys, dtype=np.int64))
    py_version, py_internal, py_gauss = rng["python"]

    state = {
        "format": FORMAT_VERSION,
        "step": ckpt.step,
        "optimizer": {"param_groups": ckpt.optimizer["param_groups"], "scalars": opt_scalars},
        "rng": {
            "python": [py_version, list(py_internal), py_gauss],
            "numpy": [np_name, np_pos, np_has_gauss, np_cached],
            "cuda_devices": len(rng["cuda"]),
        },
        "sampler": ckpt.sampler,
        "meta": ckpt.meta,
    }
    return tensors, state


def _unflatten(tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> Checkpoint:
    trainable = {k[len("param/"):]: v for k, v in tensors.items() if k.startswith("param/")}
    extra = {k[len("extra/"):]: v for k, v in tensors.items() if k.startswith("extra/")}
    opt_state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, idx, name = key.split("/", 2)
            opt_state.setdefault(int(idx), {})[name] = value
    for idx, scalars in state["optimizer"]["scalars"].items():
        opt_state.setdefault(int(idx), {}).update(scalars)
    np_name, np_pos, np_has_gauss, np_cached = state["rng"]["numpy"]
    py_version, py_internal, py_gauss = state["rng"]["python"]
    np_keys = tensors["rng/numpy_keys"].numpy().astype(np.uint32)
    rng = {
        "python": (py_version, tuple(py_internal), py_gauss),
        "numpy": (np_name, np_keys, np_pos, np_has_gauss, np_cached),
        "torch": tensors["rng/torch"],
        "cuda": [tensors[f"rng/cuda/{i}"] for i in range(state["rng"]["cuda_devices"])],
    }
    return Checkpoint(
        step=int(state["step"]),
        trainable=trainable,
        optimizer={"state": opt_state, "param_groups": state["optimizer"]["param_groups"]},
        rng=rng,
        sampler=state["sampler"],
        meta=state["meta"],
        extra=extra,
    )


# --- files ----------------------------------------------------------------------------------------


def save_checkpoint(folder: str | Path, ckpt: Checkpoint, *, keep: int = 1) -> Path:
    """Write `ckpt` atomically as `<folder>/step-NNNNNNNN`; keep only the newest `keep`."""
    folder = Path(folder)
    private_dir(folder)
    tensors, state = _flatten(ckpt)
    final = folder / f"step-{ckpt.step:08d}"
    # replace: the same step saved twice (a stop right after a periodic save)
    with atomic_folder(final, replace=True) as tmp:
        save_file(tensors, str(tmp / "tensors.safetensors"))
        (tmp / "state.json").write_text(json.dumps(state), encoding="utf-8")
    for old in _step_dirs(folder)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _step_dirs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def latest_checkpoint(folder: str | Path | None) -> Path | None:
    """The newest complete checkpoint under `folder`, or None."""
    if folder is None:
        return None
    dirs = [p for p in _step_dirs(Path(folder)) if (p / "state.json").is_file()]
    return dirs[-1] if dirs else None


def load_checkpoint(path: str | Path) -> Checkpoint:
    path = Path(path)
    state = loads((path / "state.json").read_bytes(), what=str(path / "state.json"))
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        found = state.get("format") if isinstance(state, dict) else None
        raise ValueError(f"{path}: checkpoint format {shown(found)} is not {FORMAT_VERSION}")
    return _unflatten(load_file(str(path / "tensors.safetensors")), state)
