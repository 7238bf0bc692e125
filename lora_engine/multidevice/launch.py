"""Train one spec on several devices: start its ranks, relay their hooks, end them together.

    train_on_devices(spec, output_dir, data_dir=..., devices=N, hooks=TrainHooks(...)) -> TrainResult

The caller's process stays in charge (the lease, heartbeat, cancel and result stay with the task
that claimed the job): it starts N rank processes (`rank.py`, the environment torchrun gives its
workers; one gloo process per rank on a CPU, one device each on CUDA), turns rank 0's events into
the caller's hooks (progress, checkpoint, resume, evaluate, phase), and passes its `should_stop`
on as a stop file that rank 0 reads at the next step (every rank stops there, rank 0 writes the
checkpoint). Rank 0 alone writes checkpoints and the adapter. The ranks hold the model whole
or sharded (the spec's `sharding`; `sharding.py`), which rank 0 reports once placed.

Ending: when every rank exited 0, rank 0's result is returned. When one fails, the others are
stopped at once (SIGTERM, then SIGKILL), and the error is raised in the caller as its own type
(a TrainingStopped, a bad spec, a diverged loss) or, for a rank that died or a group that broke,
as RankFailed (transient: the retry resumes from the last checkpoint). A rank that hangs fails its
peers' next collective after `timeout_s`. When the caller's hooks raise (a lost lease), every rank
is killed before the error goes on.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lora_engine.errors import RankFailed
from lora_engine.multidevice.channel import (
    RESULT,
    STOP,
    EventReader,
    Plan,
    error_file,
    read_json,
    rebuild_error,
)

log = logging.getLogger(__name__)

POLL_S = 0.2
KILL_GRACE_S = 5.0
DEFAULT_TIMEOUT_S = 600.0


def rank_env(rank: int, world: int, folder: Path, threads: int) -> dict[str, str]:
    """The environment of rank `rank`: torchrun's variables, the rendezvous file, and CPU threads
    shared out (a passive OpenMP wait: idle ranks do not spin on cores a peer needs)."""
    env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
               LOCAL_WORLD_SIZE=str(world), LORAFLEET_RANK_STORE=str(folder / "store"),
               LORAFLEET_LAUNCHER_PID=str(os.getpid()), OMP_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads), OMP_WAIT_POLICY="PASSIVE", TOKENIZERS_PARALLELISM="false")
    for name in ("MASTER_ADDR", "MASTER_PORT"):  # the file store, not a port someone else may take
        env.pop(name, None)
    return env


def threads_per_rank(devices: int) -> int:
    return max(1, (os.cpu_count() or 1) // devices)


class Ranks:
    """The rank processes of one run, and how they ended."""

    def __init__(self, folder: Path, devices: int):
        threads = threads_per_rank(devices)
        command = [sys.executable, "-m", "lora_engine.multidevice.rank", str(folder)]
        # Their own session: a terminal's Ctrl-C reaches the launcher alone, which stops them
        # through rank 0 (a checkpoint first); they die with it if it is killed (rank.py).
        self.procs = [subprocess.Popen(command, env=rank_env(r, devices, folder, threads),
                                       start_new_session=True) for r in range(devices)]
        self.first_failed: int | None = None

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def poll(self) -> bool:
        """True once every rank ended, or one failed (then the rest are stopped)."""
        codes = [p.poll() for p in self.procs]
        failed = [r for r, c in enumerate(codes) if c not in (None, 0)]
        if failed and self.first_failed is None:
            self.first_failed = failed[0]
            self.stop_all()
        return all(c is not None for c in codes) or bool(failed)

    def stop_all(self) -> None:
        alive = [p for p in self.procs if p.poll() is None]
        for p in alive:
            p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + KILL_GRACE_S
        for p in alive:
            try:
                p.wait(timeout=max(deadline - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def codes(self) -> list[int | None]:
        return [p.poll() for p in self.procs]


def relay(event: dict, hooks) -> None:
    """One event of rank 0 into the caller's hook."""
    from lora_engine.recipe import Progress
    from lora_engine.selection import EvalPoint

    kind = event.pop("kind")
    if kind == "progress" and hooks.on_progress is not None:
        hooks.on_progress(Progress(**event))
    elif kind == "checkpoint" and hooks.on_checkpoint is not None:
        hooks.on_checkpoint(int(event["step"]), Path(event["path"]))
    elif kind == "resume" and hooks.on_resume is not None:
        hooks.on_resume(int(event["step"]), Path(event["path"]))
    elif kind == "evaluate" and hooks.on_evaluate is not None:
        hooks.on_evaluate(EvalPoint(**event))
    elif kind == "phase" and hooks.on_phase is not None:
        hooks.on_phase(event["phase"])
    elif kind == "placed":  # the result's stats say it too (RunStats.sharding)
        log.info("the ranks hold the model %s", "sharded (fsdp)" if event["sharding"] == "fsdp" else "whole")


def failure(folder: Path, ranks: Ranks) -> BaseException:
    """Why the run failed: a rank's own error (rank 0's first) as its type; else the rank that
    died (or broke the group) as RankFailed."""
    reports = {}
    for r in range(len(ranks.procs)):
        path = error_file(folder, r)
        if path.is_file():
            reports[r] = read_json(path)
    own = [r for r in sorted(reports) if not reports[r]["collective"]]
    if own:
        return rebuild_error(reports[own[0]])
    codes = ranks.codes()
    dead = ranks.first_failed if ranks.first_failed is not None else next(
        (r for r, c in enumerate(codes) if c != 0), 0)
    code = codes[dead]
    how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
    if dead in reports:
        how = f"lost its process group ({reports[dead]['message'].splitlines()[0][:200]})"
    return RankFailed(f"rank {dead} of {len(codes)} {how}: the other ranks were stopped; "
                      "another attempt resumes from the last checkpoint")


def read_result(folder: Path):
    from lora_engine.recipe import RunStats, TrainResult
    from lora_engine.selection import EvalPoint

    doc = read_json(folder / RESULT)
    return TrainResult(adapter_dir=Path(doc["adapter_dir"]), metrics=doc["metrics"],
                       stats=RunStats(**doc["stats"]), losses=doc["losses"],
                       eval_history=[EvalPoint(**p) for p in doc["eval_history"]])


def plan_for(spec, output_dir: str | Path, *, data_dir: str | Path, hooks, timeout_s: float) -> Plan:
    """What every rank of a run reads (`channel.Plan`), from a resolved spec and the hooks' settings."""
    return Plan(spec=spec.model_dump(mode="json"), output_dir=str(output_dir), data_dir=str(data_dir),
                checkpoint_dir=str(hooks.checkpoint_dir) if hooks.checkpoint_dir is not None else None,
                checkpoint_every=hooks.checkpoint_every, divergence_factor=hooks.divergence_factor,
                divergence_patience=hooks.divergence_patience, timeout_s=timeout_s)


def train_on_devices(spec, output_dir: str | Path, *, data_dir: str | Path, devices: int, hooks=None,
                     timeout_s: float = DEFAULT_TIMEOUT_S, on_start=None):
    """Train `spec` data-parallel on `devices` rank processes (see the module docstring).
    `on_start(pids)`: called once the ranks are started (tests kill one)."""
    from lora_engine.recipe import TrainHooks, resolve_spec

    hooks = hooks or TrainHooks()
    spec = resolve_spec(spec, data_dir=data_dir)  # a bad spec fails here, before any rank starts
    folder = Path(tempfile.mkdtemp(prefix="lorafleet-ranks-"))
    stop_sent = False
    try:
        plan_for(spec, output_dir, data_dir=data_dir, hooks=hooks, timeout_s=timeout_s).write(folder)
        ranks = Ranks(folder, devices)
        try:
            if on_start is not None:
                on_start(ranks.pids)
            events = EventReader(folder)
            while True:
                done = ranks.poll()
                for event in events.read():
                    relay(event, hooks)
                if done:
                    break
                if not stop_sent and hooks.should_stop is not None and hooks.should_stop():
                    (folder / STOP).touch()
                    stop_sent = True
                time.sleep(POLL_S)
        finally:
            ranks.stop_all()  # the caller's hook raised, or the run is over: no rank outlives it
        if all(c == 0 for c in ranks.codes()) and (folder / RESULT).is_file():
            return read_result(folder)
        raise failure(folder, ranks)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
