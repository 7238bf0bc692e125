"""One rank of a multi-device run: `python -m lora_engine.multidevice.rank RUN_FOLDER`.

Started by the launcher (`launch.py`) with the environment torchrun gives a worker (RANK,
WORLD_SIZE, LOCAL_RANK) and the rendezvous file LORAFLEET_RANK_STORE; under `torchrun` itself
(MASTER_ADDR/MASTER_PORT set) it joins by env:// instead. Every rank sets up the same run
(`recipe.setup`), places it (the whole model on its device, or its shard of it:
`sharding.place`), resumes from the same checkpoint and trains its slice of each batch
(`parallel.DataParallel`, `sharding.FullySharded`); rank 0 alone reports progress and writes
checkpoints and the adapter. A replicated run's rank 0 evaluates the finished run alone; a
sharded run's ranks all take part in each forward (and in gathering what rank 0 writes).
Every collective times out after the plan's `timeout_s`, and a rank whose launcher dies dies
with it (PR_SET_PDEATHSIG): no group outlives its job.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import time
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from lora_engine.multidevice.channel import (
    RESULT,
    STOP,
    STORE,
    Plan,
    append_event,
    describe_error,
    error_file,
)
from lora_engine.multidevice.parallel import DataParallel

PR_SET_PDEATHSIG = 1


def die_with_launcher() -> None:
    """SIGKILL this rank when the process that started it dies (Linux; elsewhere a no-op)."""
    launcher = int(os.environ.get("LORAFLEET_LAUNCHER_PID", "0"))
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if launcher and os.getppid() != launcher:  # it died before the prctl took effect
        os._exit(1)


def join_group(folder: Path, timeout_s: float) -> DataParallel:
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    cuda = torch.cuda.is_available() and os.environ.get("LORAFLEET_DEVICE") != "cpu"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
    backend, timeout = ("nccl" if cuda else "gloo"), timedelta(seconds=timeout_s)
    if "MASTER_ADDR" in os.environ:  # under torchrun
        dist.init_process_group(backend, rank=rank, world_size=world, timeout=timeout)
    else:
        store = dist.FileStore(os.environ.get("LORAFLEET_RANK_STORE", str(folder / STORE)), world)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    return DataParallel(rank, world, device)


def rank_hooks(plan: Plan, folder: Path, parallel: DataParallel):
    """Rank 0 reports every hook as an event and reads the launcher's stop request; the others
    take part in the stop decision (every rank stops at the same step) and in each checkpoint
    (a sharded run's is gathered from every rank; rank 0 writes it)."""
    from lora_engine.recipe import TrainHooks

    def should_stop() -> bool:
        return parallel.agree(parallel.rank == 0 and (folder / STOP).exists())

    common = {"should_stop": should_stop, "divergence_factor": plan.divergence_factor,
              "divergence_patience": plan.divergence_patience,
              "checkpoint_every": plan.checkpoint_every if plan.checkpoint_dir else 0,
              "checkpoint_dir": Path(plan.checkpoint_dir) if plan.checkpoint_dir else None}
    if parallel.rank != 0:
        return TrainHooks(**common)
    return TrainHooks(
        **common,
        on_progress=lambda p: append_event(folder, "progress", **asdict(p)),
        on_checkpoint=lambda step, path: append_event(folder, "checkpoint", step=step, path=str(path)),
        on_evaluate=lambda p: append_event(folder, "evaluate", step=p.step, epoch=p.epoch,
                                           score=p.score, metrics=p.metrics),
        on_phase=lambda phase: append_event(folder, "phase", phase=phase),
    )


def train_rank(plan: Plan, folder: Path, parallel: DataParallel):
    """This rank's part of the run; rank 0 returns the TrainResult, the others None."""
    from lora_engine.device import PeakMemory, pick_device
    from lora_engine.multidevice.sharding import may_shard, place
    from lora_engine.recipe import end_run, fit, resolve_spec, resume_run, setup

    wall0 = time.perf_counter()
    spec = resolve_spec(plan.spec, data_dir=plan.data_dir)
    device = pick_device("cpu" if parallel.device.type == "cpu" else None)
    mem = PeakMemory(device)
    mem.start()
    # A run that may be sharded is built on the CPU: only each rank's shard reaches its device.
    built_on_cpu = may_shard(spec.sharding, device.device)
    run = setup(spec, data_dir=plan.data_dir, device=device, place=not built_on_cpu)
    parallel = place(run, parallel)
    mem.mark_loaded()
    resumed = resume_run(run, Path(plan.checkpoint_dir) if plan.checkpoint_dir else None)
    if parallel.sharding == "replicate":
        parallel.align(list(run.trainable.values()))
    hooks = rank_hooks(plan, folder, parallel)
    if parallel.rank == 0:
        append_event(folder, "placed", sharding=parallel.sharding)
        if resumed is not None:
            append_event(folder, "resume", step=run.step, path=str(resumed))
    fit(run, hooks)
    if parallel.rank != 0 and parallel.sharding == "replicate":
        return None  # rank 0 evaluates the whole model alone
    return end_run(run, hooks, Path(plan.output_dir), data_dir=plan.data_dir, mem=mem, wall0=wall0)


def write_result(folder: Path, result) -> None:
    doc = {"adapter_dir": str(result.adapter_dir), "metrics": result.metrics, "stats": asdict(result.stats),
           "losses": result.losses, "eval_history": [asdict(p) for p in result.eval_history]}
    tmp = folder / (RESULT + ".tmp")
    tmp.write_text(json.dumps(doc), encoding="utf-8")
    tmp.replace(folder / RESULT)


def collective_failure(exc: BaseException) -> bool:
    """A collective that failed because a peer died or hung, not this rank's own problem."""
    text = str(exc)
    return isinstance(exc, dist.DistError) or any(
        t in text for t in ("Connection closed by peer", "Connection reset by peer", "Timed out", "gloo"))


def main(argv: list[str]) -> int:
    die_with_launcher()
    folder = Path(argv[0])
    plan = Plan.read(folder)
    threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    if threads > 0:
        torch.set_num_threads(threads)
    parallel = None
    try:
        parallel = join_group(folder, plan.timeout_s)
        result = train_rank(plan, folder, parallel)
        if result is not None:
            write_result(folder, result)
        return 0
    except BaseException as exc:  # reported whole to the launcher, which rebuilds it
        rank = parallel.rank if parallel is not None else int(os.environ.get("RANK", "0"))
        # Interrupted (a signal, an exit) is not the job's problem either: the attempt is retried.
        report = describe_error(exc, collective=collective_failure(exc) or not isinstance(exc, Exception))
        error_file(folder, rank).write_text(json.dumps(report), encoding="utf-8")
        if not isinstance(exc, Exception):
            raise
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
