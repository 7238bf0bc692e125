"""Fully sharded data parallel (FSDP2): each rank holds 1/W of every weight, gradient and
optimizer state, for a run whose training state does not fit one device.

    place(run, parallel) -> DataParallel     the run's model on this rank's device, whole or sharded
    sharding_for(asked, model, device)        "replicate" | "fsdp": the spec's choice, or auto's
    shard_model(model, mesh)                  FSDP2 units, in place
    FullySharded(rank, world, device)         the DataParallel of a sharded run

A run that may be sharded (`may_shard`) is built on the CPU and each rank moves only its shards
to its device; its LoRA and head initialisation then draws from the CPU generator where a
one-device CUDA run draws from the CUDA one (the same seed, other numbers: equal curves across
process counts are a CPU property here, as bf16 makes them anyway).

The math is `parallel.DataParallel`'s (the same slices of the same global batches, each slice's
loss scaled by its share): FSDP's reduce-scatter averages the ranks' gradients as the all-reduce
does, so a sharded run trains the numbers a replicated one or one device trains.

Units. `torch.distributed.fsdp.fully_shard` gathers a unit's weights in a forward pre-hook and
frees them after its forward, and reduce-scatters its gradients after its backward: hooks on the
unit's `__call__`. Our forwards (forward/encoder.py, decoder.py) run a transformer layer as a
function over its submodules (`_layer(layer, ...)`), never `layer.__call__`; what every forward,
ours and Hugging Face's, does call is each module that holds weights: Linear, Embedding,
LayerNorm/RMSNorm, and our LoRA layers (which read their base weight and A, B themselves: one
unit each, with the frozen base and the trainable A, B; FSDP2 allows mixed requires_grad). So
the units are those modules, each the root of its own FSDP state (no module above them runs
`__call__` in our forward), each gathered for its forward and again for its backward. Modules
sharing a weight (a Llama's tied input embedding and LM head) stay whole on every rank, their
gradient all-reduced as in DataParallel: FSDP2 shards a shared weight only in a group of modules
(`fully_shard([embed, head])`), and a group cannot be a root. Gathering one Linear at a time
costs more collectives than one layer at a time; a layer unit, and one root above every unit,
would need our forwards to call a module where they call a function.

Gradient checkpointing (forward/recompute.py) wraps a layer's function: its units gather again
when the backward recomputes them, which FSDP2 supports (tested).

Checkpoints, the adapter and the full model are written as on one device (rank 0 writes): every
rank takes part in gathering each sharded tensor whole (`full_tensor`, then to the CPU), so a
checkpoint resumes under any process count and either sharding; on resume every rank reads it
and keeps its own shard (`distribute_tensor` without communication). Evaluation runs the sharded
forward on every rank (the same rows on each: rank 0 records the scores); gathering the model
onto rank 0 would need the memory the run is sharded for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

from lora_engine.multidevice.local import local_view
from lora_engine.multidevice.parallel import DataParallel

# `auto` shards when the training state would take more than this share of one device: the rest
# is for the activations, the CUDA context and the allocator's slack.
FIT_FRACTION = 0.75
SHARDINGS = ("replicate", "fsdp")


def resident_state_bytes(model: nn.Module) -> int:
    """What training keeps resident, activations aside: every weight, and for each trainable one
    its gradient and AdamW's two moments (in the weight's dtype)."""
    params = {id(p): p for p in model.parameters()}.values()  # a tied weight once
    weights = sum(p.numel() * p.element_size() for p in params)
    trainable = sum(p.numel() * p.element_size() for p in params if p.requires_grad)
    return weights + 3 * trainable


def sharding_for(asked: str, model: nn.Module, device: torch.device) -> str:
    """The sharding a run uses: the spec's "replicate"/"fsdp", or for "auto" fsdp exactly when
    the resident state exceeds FIT_FRACTION of the smallest rank's CUDA device (a CPU: never).
    Every rank of the group must call it (the smallest device is agreed on)."""
    if asked in SHARDINGS:
        return asked
    if device.type != "cuda":
        return "replicate"
    capacity = torch.tensor([float(torch.cuda.get_device_properties(device).total_memory)], device=device)
    dist.all_reduce(capacity, op=dist.ReduceOp.MIN)
    return "fsdp" if resident_state_bytes(model) > FIT_FRACTION * float(capacity.item()) else "replicate"


def may_shard(asked: str, device: torch.device) -> bool:
    """Whether `sharding_for` may choose fsdp (else the run is replicated whatever the model)."""
    return asked == "fsdp" or (asked == "auto" and device.type == "cuda")


def place(run, parallel: DataParallel) -> DataParallel:
    """Put `run`'s model on this rank's device, whole or sharded (`sharding_for`); the
    DataParallel that trains it. Sharding replaces the model's parameters (and a move may), so
    the run's optimizer is built again over those it has now (before any step or resume)."""
    from lora_engine.recipe import rebind_parameters

    if sharding_for(run.spec.sharding, run.model, parallel.device) == "fsdp":
        shard_model(run.model, mesh_of(parallel))
        parallel = FullySharded(parallel.rank, parallel.world, parallel.device)
    # The whole model, or what no unit holds (buffers: position ids, rotary tables).
    run.model.to(parallel.device)
    rebind_parameters(run)
    run.parallel = parallel
    return parallel


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The modules FSDP gathers one at a time, in model order (see the module docstring): each
    LoRA layer whole, each other module holding weights of its own; a module sharing a weight
    with another (tied embeddings) is none: it stays whole on every rank."""
    from lora_engine.inject import lora_modules

    lora = {id(m) for _, m in lora_modules(model)}
    units: list[nn.Module] = []
    inside_lora: set[int] = set()
    for module in model.modules():
        if id(module) in inside_lora:
            continue
        if id(module) in lora:
            inside_lora.update(id(m) for m in module.modules())
            units.append(module)
        elif any(True for _ in module.parameters(recurse=False)):
            units.append(module)
    holders: dict[int, int] = {}
    for unit in units:
        for p in unit.parameters():
            holders[id(p)] = holders.get(id(p), 0) + 1
    return [u for u in units if all(holders[id(p)] == 1 for p in u.parameters())]


def shard_model(model: nn.Module, mesh) -> int:
    """Shard `model` in place over `mesh` (its modules keep their names; their weights become
    DTensors on the mesh's device); the number of units.

    Every unit is the root of its own FSDP state, so `reshard_after_forward` is given: FSDP keeps
    a root's weights gathered from its forward to its backward unless told (it expects one root
    around the whole forward, whose weights the backward needs first)."""
    from torch.distributed.fsdp import fully_shard

    units = shard_units(model)
    for unit in units:
        fully_shard(unit, mesh=mesh, reshard_after_forward=True)
    return len(units)


@dataclass(frozen=True)
class FullySharded(DataParallel):
    """A data parallel rank whose model is sharded (`shard_model`): FSDP reduces the sharded
    weights' gradients; what this adds is the rest of the step and whole tensors for the files."""

    sharding: ClassVar[str] = "fsdp"

    def sync_step(self, params: Sequence[nn.Parameter], step_loss: torch.Tensor) -> torch.Tensor:
        """The step's mean loss; the gradients of weights left whole (tied ones, `shard_units`)
        averaged as in DataParallel, the sharded ones already are (reduce-scatter)."""
        return super().sync_step([p for p in params if not isinstance(p, DTensor)], step_loss)

    def clip(self, params: Sequence[nn.Parameter], max_norm: float) -> torch.Tensor:
        """`clip_grad_norm_` over the whole (sharded) gradient: the sum of squares of the local
        shards summed across ranks, plus that of whole gradients once; the norm before clipping."""
        sharded = [local_view(p.grad) for p in params if p.grad is not None and isinstance(p.grad, DTensor)]
        whole = [p.grad for p in params if p.grad is not None and not isinstance(p.grad, DTensor)]
        squares = torch.zeros((), device=self.device, dtype=torch.float32)
        for g in sharded:
            squares += g.float().pow(2).sum()
        dist.all_reduce(squares, op=dist.ReduceOp.SUM)
        for g in whole:
            squares += g.float().pow(2).sum()
        norm = squares.sqrt()
        scale = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
        for g in (*sharded, *whole):
            g.mul_(scale.to(g.dtype))
        return norm

    def gathered(self, tensors: dict[str, torch.Tensor], like: dict[str, torch.Tensor] | None = None
                 ) -> dict[str, torch.Tensor]:
        """Every tensor whole, on the CPU, on rank 0 (empty elsewhere); every rank must call it.
        `like[name]`: the sharded tensor whose layout a plain local shard `tensors[name]` has."""
        out = {}
        for name, t in tensors.items():
            template = like.get(name) if like is not None else None
            if isinstance(template, DTensor) and not isinstance(t, DTensor):
                t = DTensor.from_local(t, template.device_mesh, template.placements,
                                       shape=template.shape, stride=template.stride())
            whole = t.detach().full_tensor() if isinstance(t, DTensor) else t.detach()
            if self.rank == 0:
                out[name] = whole.cpu()
        return out

    def placed(self, whole: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """`whole` (read from a checkpoint on every rank) laid out as `like`: this rank's shard."""
        whole = whole.to(like.device, like.dtype)
        if not isinstance(like, DTensor):
            return whole
        return distribute_tensor(whole, like.device_mesh, like.placements, src_data_rank=None)

    def gathered_optimizer(self, state: dict[str, Any]) -> dict[str, Any]:
        """An optimizer `state_dict()` with every sharded state tensor whole (rank 0's is the
        one to write)."""
        per_param = {}
        for key in sorted(state["state"]):
            per_param[key] = {name: (self.gathered({"t": v}).get("t") if isinstance(v, DTensor) else v)
                              for name, v in state["state"][key].items()}
        return {"state": per_param, "param_groups": state["param_groups"]}

    def placed_optimizer(self, state: dict[str, Any], params: Sequence[nn.Parameter]) -> dict[str, Any]:
        """A checkpoint's optimizer state with each parameter-shaped tensor laid out as its
        parameter (`params`: the optimizer's parameters in its groups' order, the ids' order)."""
        out = {}
        for key, entry in state["state"].items():
            p = params[int(key)]
            out[key] = {name: (self.placed(v, p.detach()) if torch.is_tensor(v) and v.shape == p.shape else v)
                        for name, v in entry.items()}
        return {"state": out, "param_groups": state["param_groups"]}

    def model_state(self, model: nn.Module, names: set[str] | None = None) -> dict[str, torch.Tensor]:
        """The model's state dict (only `names`, when given) with every tensor whole, on rank 0."""
        state = model.state_dict()
        return self.gathered({n: t for n, t in state.items() if names is None or n in names})


def local_state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """This rank's resident training state: its part of every weight, a gradient of each
    trainable one, and the optimizer's state (what `resident_state_bytes` estimates, measured)."""
    params = {id(p): p for p in model.parameters()}.values()
    weights = sum(local_view(p).numel() * p.element_size() for p in params)
    grads = sum(local_view(p).numel() * p.element_size() for p in params if p.requires_grad)
    moments = sum(local_view(v).numel() * v.element_size() for entry in optimizer.state.values()
                  for v in entry.values() if torch.is_tensor(v) and v.dim() > 0)
    return weights + grads + moments


def mesh_of(parallel: DataParallel):
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(parallel.device.type, (parallel.world,))

