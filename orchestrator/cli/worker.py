"""`lorafleet worker` and `lorafleet reconcile`: run the GPU workers and the reconciler."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Any

import click

from orchestrator.cli.helpers import emit, json_option, status
from orchestrator.dispatch import worker_command


def visible_devices(gpus: int, env: dict[str, str] | None = None) -> list[str]:
    """The device ids for `gpus` worker processes: the first `gpus` of an inherited
    CUDA_VISIBLE_DEVICES (a container or scheduler may have given us e.g. "2,3"), else 0..gpus-1."""
    inherited = (os.environ if env is None else env).get("CUDA_VISIBLE_DEVICES")
    if inherited is None or not inherited.strip():
        return [str(i) for i in range(gpus)]
    ids = [d.strip() for d in inherited.split(",") if d.strip()]
    if gpus > len(ids):
        raise click.UsageError(
            f"--gpus {gpus}: CUDA_VISIBLE_DEVICES={inherited!r} shows only {len(ids)} device(s)"
        )
    return ids[:gpus]


def device_groups(gpus: int | None, devices: int | None) -> list[list[str]]:
    """The device ids of each worker process: --gpus N alone, one each; --devices K alone, one
    process of K; both, N/K processes of K (N a multiple of K)."""
    per = devices or 1
    total = gpus if gpus is not None else per
    if total % per:
        raise click.UsageError(f"--gpus {gpus} is not a multiple of --devices {devices}")
    ids = visible_devices(total)
    return [ids[i:i + per] for i in range(0, total, per)]


def check_pool(devices: int | None, concurrency: int) -> None:
    """Refuse --concurrency C > 1 with --devices K > 1: each of the C prefork children would
    start K ranks on the same K devices at once, each believing it owns them all. Splitting the
    devices between children is `--gpus C*K --devices K` already (one process per group)."""
    if devices is not None and devices > 1 and concurrency > 1:
        raise click.UsageError(
            f"--concurrency {concurrency} with --devices {devices}: a worker process that owns several "
            f"devices runs one job at a time across all of them (--concurrency 1); for several jobs "
            f"at once start several processes of {devices} devices each with `--gpus N --devices "
            f"{devices}` (N a multiple of {devices}), or use --concurrency without --devices")


@click.command()
@click.option(
    "--gpus", type=click.IntRange(min=1, max=64),
    help="Start one worker process per GPU (CUDA_VISIBLE_DEVICES=i).",
)
@click.option(
    "--devices", type=click.IntRange(min=1, max=64),
    help="Devices each worker process owns: it trains jobs of `devices` <= K across them (one rank "
         "per device; on a CPU, K gloo processes). With --gpus N: N/K processes of K GPUs each.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1, max=1024),
    default=1,
    show_default=True,
    help="Jobs run at once per worker process (1: solo pool, the right choice for a GPU; "
         "not with --devices K > 1).",
)
@click.option("--loglevel", default="info", show_default=True)
@click.option(
    "--beat", is_flag=True, help="Also run the periodic reconciler in this worker (one per cluster)."
)
@click.option("--log-format", type=click.Choice(["text", "json"]),
              help="Log lines as text or one JSON object per line (default: LORAFLEET_LOG_FORMAT).")
def worker(gpus: int | None, devices: int | None, concurrency: int, loglevel: str, beat: bool,
           log_format: str | None) -> None:
    """Start a Celery worker that trains queued jobs (Ctrl-C stops it after a warm shutdown).

    Checks first that its jobs can run (artifacts writable; warns about a missing Java, data
    folder or model package) and sets OMP_WAIT_POLICY=PASSIVE unless you set it. With
    LORAFLEET_METRICS_PORT set, each worker process serves Prometheus metrics (process i of
    --gpus N on the port + i). The worker runs as its own process (`worker_command`): this CLI
    never imports Celery or the worker app, it starts them and passes signals on; they stop
    (warm) when this process dies, however it dies (Linux).

    \b
    Examples:
      lorafleet worker
      LORAFLEET_METRICS_PORT=9400 lorafleet worker --gpus 4 --log-format json
      lorafleet worker --gpus 4 --devices 2     # two processes, two GPUs each
    """
    from worker.preflight import PreflightError, prepare_environment

    check_pool(devices, concurrency)
    try:
        settings = prepare_environment(log_format)
    except PreflightError as exc:
        raise click.ClickException(f"the worker cannot start: {exc}") from None
    queue = settings.queue
    if gpus is None and devices is None:
        commands = [(dict(os.environ), worker_command(queue=queue, concurrency=concurrency, loglevel=loglevel,
                                                      beat=beat))]
    else:
        # One process per GPU (or per group of --devices GPUs), each seeing only its own: a
        # process never initialises CUDA on a GPU it does not own, and a crash takes down its
        # own devices' job only.
        commands = []
        for index, group in enumerate(device_groups(gpus, devices)):
            env = dict(os.environ, CUDA_VISIBLE_DEVICES=",".join(group),
                       LORAFLEET_WORKER_DEVICES=str(len(group)))
            if settings.metrics_port:  # one exporter per process
                env["LORAFLEET_METRICS_PORT"] = str(settings.metrics_port + index)
            commands.append((env, worker_command(queue=queue, concurrency=concurrency, loglevel=loglevel,
                                                 hostname=f"gpu{index}@%h", beat=beat and index == 0)))
    # Own session: a terminal's Ctrl-C reaches them once, through `forward`, not twice (Celery
    # takes a second SIGINT as a cold shutdown that kills the running job). Their lifeline: if
    # this process is killed (SIGKILL forwards nothing), each gets SIGTERM, a warm shutdown,
    # instead of living on as an orphan beside the worker a supervisor restarts.
    from orchestrator.lifeline import child_dies_with_me

    procs = [subprocess.Popen(command, env=env, start_new_session=True, preexec_fn=child_dies_with_me())
             for env, command in commands]
    if gpus is not None or devices is not None:
        status(f"started {len(procs)} worker process(es) of {devices or 1} device(s) each: "
               f"{', '.join(str(p.pid) for p in procs)}")

    def forward(signum: int, _frame: object) -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    codes = [proc.wait() for proc in procs]
    if any(codes):
        raise SystemExit(max(codes))


# Longer waits are typing mistakes, and past ~1e9 s a datetime arithmetic overflows.
MAX_WAIT_S = 366 * 24 * 3600


class Seconds(click.FloatRange):
    """A number of seconds in [min, MAX_WAIT_S]; unlike FloatRange, 'nan' is refused too."""

    def __init__(self, min: float) -> None:
        super().__init__(min=min, max=MAX_WAIT_S)

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        seconds = super().convert(value, param, ctx)
        if seconds != seconds:  # NaN compares false with every bound
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        return seconds


@click.command()
@click.option("--every", type=Seconds(min=0.1),
              help="Repeat every SECONDS until interrupted.")
@click.option(
    "--lease-grace",
    type=Seconds(min=0),
    default=5.0,
    show_default=True,
    help="Seconds past a lease's expiry before its job is taken back.",
)
@click.option(
    "--redispatch-after",
    type=Seconds(min=0),
    default=60.0,
    show_default=True,
    help="Seconds a queued job waits before its message is sent again (doubles per re-send).",
)
@json_option
def reconcile(every: float | None, lease_grace: float, redispatch_after: float, as_json: bool) -> None:
    """Requeue (or fail) jobs whose lease expired; re-send messages for queued jobs that wait."""
    from orchestrator.announce import reconcile_once

    if every is not None:  # a long-lived reconciler sends webhooks continuously, between its passes
        from orchestrator.config import get_settings
        from orchestrator.webhook_delivery import WebhookSender

        WebhookSender(get_settings()).start()
    while True:
        try:
            report = reconcile_once(lease_grace_s=lease_grace, redispatch_after_s=redispatch_after,
                                    webhooks=every is None)
        except Exception as exc:  # a broker or registry blip must not end a periodic reconciler
            if every is None:
                raise
            from orchestrator.retries import describe

            status(f"reconcile pass failed, next in {every:g}s: {describe(exc).splitlines()[0]}")
            time.sleep(every)
            continue
        emit(
            report,
            as_json,
            lambda r: click.echo(
                f"dispatched {len(r['dispatched'])}, requeued {len(r['requeued'])}, "
                f"failed {len(r['failed'])}, cancelled {len(r['cancelled'])}, paused {len(r['paused'])}"
                + (f", webhooks delivered {len(r['webhooks_delivered'])}"
                   if "webhooks_delivered" in r else "")
            ),
        )
        if every is None:
            return
        time.sleep(every)
