"""`lorafleet status`: the queue, the workers, what runs and what waits (and why)."""

from __future__ import annotations

import click

from orchestrator.cli.helpers import Column, json_option, open_session, print_json, print_table, wide_option
from orchestrator.cli.output import ago, short_id
from orchestrator.registry.states import JOB_STATES
from orchestrator.text import redact_url


@click.command()
@wide_option
@json_option
def status(wide: bool, as_json: bool) -> None:
    """Queue depth by tenant and state, workers by their last heartbeat, running jobs with step
    and throughput, and why each queued job waits.

    \b
    Examples:
      lorafleet status
      lorafleet status --json | jq .waiting
    """
    from orchestrator.config import get_settings
    from orchestrator.services.status import fleet_status

    settings = get_settings()
    with open_session() as session:
        fleet = fleet_status(session, lease_seconds=settings.lease_seconds)
    if as_json:
        print_json(fleet.to_dict())
        return
    click.echo(f"queued {fleet.queued_total}   running {len(fleet.running)}   "
               f"workers alive {sum(w.alive for w in fleet.workers)}")
    click.echo(f"registry {redact_url(settings.database_url)}")
    click.echo()
    rows = [{"tenant": slug, **counts} for slug, counts in fleet.jobs.items()]
    print_table(rows, [Column("tenant"), *(Column(s, justify="right") for s in JOB_STATES)], wide=wide,
                empty="no tenants yet (lorafleet tenant create SLUG)")
    click.echo("\nworkers (by their last heartbeat)")
    print_table([{"worker": w.worker, "state": w.state,
                  "job": short_id(w.job, wide) if w.job else ("idle" if w.state == "alive" else "-"),
                  "device": (w.device or "-") + (f" x{w.devices}" if w.devices > 1 else ""),
                  "beat": ago(w.last_heartbeat, wide)} for w in fleet.workers],
                [Column("worker", flexible=True), Column("state"), Column("job"),
                 Column("device", flexible=True), Column("beat", "last beat", justify="right")], wide=wide,
                empty="(no worker has registered: start one with `lorafleet worker`)")
    for w in fleet.workers:  # out of service until restarted: say why
        if w.state == "unhealthy":
            click.echo(f"{w.worker} is unhealthy, it claims no jobs: {w.reason}")
    if fleet.running:
        click.echo("\nrunning")
        print_table([{"id": short_id(r.id, wide), "tenant": r.tenant, "task": r.task,
                      "step": f"{r.step if r.step is not None else '-'}/{r.total or '?'}", "loss": r.loss,
                      "it_s": f"{r.steps_per_s:.2f}" if r.steps_per_s else "-",
                      "started_at": r.started_at, "worker": r.worker} for r in fleet.running],
                    [Column("id"), Column("tenant"), Column("task"), Column("step", justify="right"),
                     Column("loss", justify="right"), Column("it_s", "it/s", justify="right"),
                     Column("started_at", "started", justify="right"), Column("worker", flexible=True)],
                    wide=wide)
    if fleet.waiting:
        click.echo(f"\nwaiting (first {len(fleet.waiting)} in claim order)")
        print_table([{"id": w.id, "tenant": w.tenant, "task": w.task, "priority": w.priority,
                      "queued_at": w.queued_at, "why": w.why} for w in fleet.waiting],
                    [Column("id"), Column("tenant"), Column("task"),
                     Column("priority", "prio", justify="right"),
                     Column("queued_at", "queued", justify="right"), Column("why", flexible=True)], wide=wide)

