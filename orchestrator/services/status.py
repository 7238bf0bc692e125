"""The fleet at a glance (`lorafleet status`): queue depth by tenant and state, the workers seen
by their last heartbeat, running jobs with their step and throughput, and why queued jobs wait.

Counts and per-worker figures are SQL aggregates (GROUP BY); only the rows shown come back.
Workers come from their own rows (`services.workers`: registered at start, a heartbeat even when
idle, stopped on a graceful shutdown, unhealthy with its reason once it took itself out of
service), with the jobs each holds counted from the leases. A lease
owner with no row (a worker of a version before the workers table) is shown as seen through its
jobs' heartbeats.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from orchestrator.registry.models import JOB_STATES, Job, Tenant, utcnow
from orchestrator.services._tx import readonly
from orchestrator.services.workers import recent_workers, worker_state

WAITING_SHOWN = 20


@dataclass
class WorkerSeen:
    worker: str  # the worker id its leases carry
    state: str  # alive, unhealthy (out of service), lost (missed heartbeats), stopped (graceful shutdown)
    alive: bool  # alive and taking jobs
    job: str | None  # the job it is on; None: idle
    running: int  # jobs it holds now (leases)
    last_heartbeat: datetime | None
    hostname: str | None = None
    pid: int | None = None
    queue: str | None = None
    device: str | None = None
    started_at: datetime | None = None
    stopped_at: datetime | None = None
    reason: str | None = None  # why it is unhealthy: its own environment failed its jobs
    unhealthy_since: datetime | None = None
    devices: int = 1  # it owns: it takes jobs asking for at most as many


@dataclass
class RunningJob:
    id: str
    tenant: str
    task: str
    worker: str | None
    step: int | None
    total: int | None
    loss: float | None
    steps_per_s: float | None  # this attempt's average, loading included
    started_at: datetime | None
    last_heartbeat: datetime | None


@dataclass
class WaitingJob:
    id: str
    tenant: str
    task: str
    priority: int
    queued_at: datetime
    why: str


@dataclass
class FleetStatus:
    at: datetime
    jobs: dict[str, dict[str, int]] = field(default_factory=dict)  # {tenant: {state: n}}, 0s kept
    workers: list[WorkerSeen] = field(default_factory=list)
    running: list[RunningJob] = field(default_factory=list)
    waiting: list[WaitingJob] = field(default_factory=list)
    queued_total: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@readonly
def fleet_status(session: Session, *, lease_seconds: float, now: datetime | None = None) -> FleetStatus:
    now = now or utcnow()
    out = FleetStatus(at=now)
    counts = session.execute(
        select(Tenant.slug, Job.state, func.count()).join(Tenant, Tenant.id == Job.tenant_id)
        .group_by(Tenant.slug, Job.state)
    )
    for slug in session.scalars(select(Tenant.slug).order_by(Tenant.slug)):
        out.jobs[slug] = dict.fromkeys(JOB_STATES, 0)
    for slug, state, n in counts:
        out.jobs.setdefault(slug, dict.fromkeys(JOB_STATES, 0))[state] = int(n)
    out.queued_total = sum(by_state["queued"] for by_state in out.jobs.values())

    held = dict(session.execute(
        select(Job.lease_owner, func.count()).where(Job.state == "running", Job.lease_owner.is_not(None))
        .group_by(Job.lease_owner)
    ).all())
    for row in session.scalars(recent_workers(now)):
        state = worker_state(row, now)
        out.workers.append(WorkerSeen(
            row.id, state, state == "alive", row.current_job_id, int(held.pop(row.id, 0)), row.last_seen,
            row.hostname, row.pid, row.queue, row.device_name, row.started_at, row.stopped_at,
            row.unhealthy_reason if state == "unhealthy" else None,
            row.unhealthy_since if state == "unhealthy" else None, row.devices))
    if held:  # lease owners without a row: seen through their jobs' heartbeats only
        alive_after = now - timedelta(seconds=lease_seconds)
        beats = session.execute(
            select(Job.lease_owner, func.max(Job.heartbeat_at), func.max(Job.id))
            .where(Job.state == "running", Job.lease_owner.in_(list(held))).group_by(Job.lease_owner))
        for worker, beat, job_id in beats:
            alive = beat is not None and beat >= alive_after
            out.workers.append(WorkerSeen(worker, "alive" if alive else "lost", alive, job_id,
                                          int(held[worker]), beat))
        out.workers.sort(key=lambda w: w.worker)

    running = session.execute(
        select(Job, Tenant.slug).join(Tenant, Tenant.id == Job.tenant_id)
        .where(Job.state == "running").order_by(Job.started_at)
    )
    for job, slug in running:
        rate = None
        if job.progress_step and job.started_at and job.heartbeat_at:
            elapsed = (job.heartbeat_at - job.started_at).total_seconds()
            rate = job.progress_step / elapsed if elapsed > 0 else None
        out.running.append(RunningJob(job.id, slug, job.task, job.lease_owner, job.progress_step,
                                      job.progress_total, job.last_loss, rate, job.started_at,
                                      job.heartbeat_at))

    # Why each queued job waits, in the order a worker would take them.
    n_running = (select(Job.tenant_id, func.count().label("n"), func.sum(Job.devices).label("busy"))
                 .where(Job.state == "running").group_by(Job.tenant_id).subquery())
    queued = session.execute(
        select(Job, Tenant.slug, Tenant.max_running, func.coalesce(n_running.c.busy, 0))
        .join(Tenant, Tenant.id == Job.tenant_id)
        .outerjoin(n_running, n_running.c.tenant_id == Job.tenant_id)
        .where(Job.state == "queued")
        .order_by(func.coalesce(n_running.c.n, 0), Job.priority.desc(), Job.created_at, Job.id)
        .limit(WAITING_SHOWN)
    )
    any_alive = any(w.alive for w in out.workers)
    unhealthy = any(w.state == "unhealthy" for w in out.workers)
    most_devices = max((w.devices for w in out.workers if w.alive), default=0)
    # A job on a quantised base needs CUDA (repositories.runs_on); a worker's device is named as
    # jobs bill it: "cpu" or "cuda:<product>".
    any_cuda = any(w.alive and (w.device or "").startswith("cuda") for w in out.workers)
    ahead = 0
    for job, slug, max_running, busy in queued:
        if busy + job.devices > max_running:
            needs = f"; it needs {job.devices}" if job.devices > 1 else ""
            why = f"tenant {slug} at its quota ({busy}/{max_running} running{needs})"
        elif any_alive and job.devices > most_devices:
            why = (f"needs {job.devices} devices; no live worker has as many (the most is {most_devices}): "
                   f"start one with `lorafleet worker --devices {job.devices}`")
        elif any_alive and job.quantize is not None and not any_cuda:
            why = (f"needs a CUDA worker (quantize: {job.quantize}, bitsandbytes' 4-bit kernels); every live "
                   "worker is on a CPU: start `lorafleet worker` on a GPU machine with "
                   "`pip install 'lorafleet[qlora]'`")
        elif ahead:
            why = f"{ahead} claimable job(s) ahead of it"
            ahead += 1
        elif not any_alive and unhealthy:
            why = "next in line; every worker that reports in is unhealthy (see its reason above)"
            ahead += 1
        elif not any_alive:
            why = "next in line; no worker has reported in (is `lorafleet worker` running?)"
            ahead += 1
        else:
            why = "next in line, for the next free worker"
            ahead += 1
        out.waiting.append(WaitingJob(job.id, slug, job.task, job.priority, job.created_at, why))
    return out

