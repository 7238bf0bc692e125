"""`lorafleet report benchmark|cost|compare|all`: thin adapters over orchestrator.reports.

Parse the options, call one report function, render it in the asked format to stdout or a file.
SQLAlchemy, rich and matplotlib load inside the commands (start-up stays fast). An `--out` is
checked before anything else runs (orchestrator.destinations: never a device, a FIFO, a dangling
link, the home or the artifacts), so a refused one has queued and written nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from orchestrator.cli.helpers import CliError, open_session, status
from orchestrator.cli.output import echo, print_document

FORMATS = ("table", "md", "csv", "json", "html")
PICKS = ("latest", "best")


def _parse_time(_ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an ISO 8601 date or time, e.g. 2026-12-01 or 2026-12-01T08:00Z", param=param
        ) from None
    # A time without a zone is UTC, like every registry timestamp.
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _parse_prices(_ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, float]:
    prices = {}
    for item in values:
        device, sep, amount = item.partition("=")
        try:
            price = float(amount)
        except ValueError:
            price = -1.0
        if not sep or not device.strip() or not price >= 0 or price == float("inf"):
            raise click.BadParameter(
                f"{item!r}: expected DEVICE=AMOUNT, a device-name prefix and a money amount >= 0 per "
                "device-hour, e.g. --price cuda=2.5 or --price 'cuda:NVIDIA H100=4'",
                param=param,
            )
        prices[device.strip()] = price
    return prices


def scope_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--tenant/--task/--base-model/--since/--until: which jobs a report covers."""
    for option in reversed(
        (
            click.option(
                "--tenant",
                "tenants",
                multiple=True,
                metavar="SLUG",
                help="Only this tenant (repeatable; default: every tenant).",
            ),
            click.option("--task", help="Only this task (e.g. sst2)."),
            click.option("--base-model", help="Only jobs on this base model (as submitted, e.g. minilm-l6)."),
            click.option(
                "--since",
                callback=_parse_time,
                metavar="TIME",
                help="Jobs created at or after TIME (ISO 8601; no zone = UTC).",
            ),
            click.option("--until", callback=_parse_time, metavar="TIME", help="Jobs created before TIME."),
        )
    ):
        fn = option(fn)
    return fn


def output_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(
        (
            click.option(
                "--format",
                "fmt",
                type=click.Choice(FORMATS),
                default="table",
                show_default=True,
                help="Output format.",
            ),
            click.option(
                "--out",
                type=click.Path(dir_okay=False, path_type=Path),
                help="Write to this file instead of stdout.",
            ),
            click.option("--json", "as_json", is_flag=True, help="Same as --format json (stable keys)."),
        )
    ):
        fn = option(fn)
    return fn


def price_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--price",
        "prices",
        multiple=True,
        callback=_parse_prices,
        metavar="DEVICE=AMOUNT",
        help="Money per device-hour for devices whose name starts with DEVICE (repeatable; over the "
        "configured LORAFLEET_PRICES).",
    )(fn)


def pick_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--pick",
        type=click.Choice(PICKS),
        default="latest",
        show_default=True,
        help="Which adapter of a tenant and task a benchmark cell shows.",
    )(fn)


def _filters(scope: dict[str, Any]) -> Any:
    from orchestrator.reports import make_filters

    return make_filters(**scope)


def _out_file(out: Path | None) -> Path | None:
    """Where `--out` may be written (resolved), or None for stdout; refused as the module says."""
    if out is None:
        return None
    from orchestrator.config import get_settings
    from orchestrator.destinations import file_destination

    return file_destination(out, get_settings(), "report --out")


def _writing(what: str, out: Path, write: Callable[[], Any]) -> Any:
    """`write()`, with an OSError (a full disk, no permission) as one clear error."""
    try:
        return write()
    except OSError as exc:
        raise CliError(f"{what}: cannot write {out}: {exc.strerror or exc}; nothing was written") from None


def _format(fmt: str, as_json: bool) -> str:
    if as_json:
        if fmt not in ("table", "json"):
            raise CliError(f"--json and --format {fmt} disagree: give one of them")
        return "json"
    return fmt


def _emit(report: Any, fmt: str, out: Path | None) -> None:
    """`report` in `fmt` to the checked `out` file (written whole or not at all), else stdout."""
    from lora_engine.atomic import atomic_write_text
    from orchestrator.reports.render import render

    if out is not None:
        text = render(report, fmt)
        _writing("report --out", out, lambda: atomic_write_text(out, text))
        status(f"wrote {out}")
    elif fmt == "table":
        from orchestrator.reports.render.table import print_report, terminal_console

        print_report(report, terminal_console())
    else:
        print_document(render(report, fmt))


def _prices(extra: dict[str, float]) -> tuple[dict[str, float], float]:
    from orchestrator.config import get_settings

    settings = get_settings()
    return {**settings.prices, **extra}, settings.storage_price_gb_month


@click.group()
def report() -> None:
    """Reports from the registry: benchmark, cost, compare (and all of them at once)."""


def _queue_reevaluation(scope: dict[str, Any], wait: bool) -> None:
    """Queue re-evaluation jobs for the report's tenants / task / base model (validated first:
    nothing to re-evaluate is an error, nothing is queued); with `wait`, until they end."""
    from orchestrator.cli.live import wait_all
    from orchestrator.services.reevaluation import submit_reevaluation

    with open_session() as session:
        jobs = submit_reevaluation(session, tenant=scope["tenants"] or None, task=scope["task"],
                                   base_model=scope["base_model"])
        queued = [(j.id, len(j.spec["adapters"]), j.base_model) for j in jobs]
    for job_id, count, base in queued:
        status(f"queued re-evaluation {job_id}: {count} adapter(s) on {base}")
    if not wait:
        status("the drift column fills in once the workers finish: run the report again")
        return
    failed = [d for d in wait_all([job_id for job_id, _, _ in queued]) if d["state"] != "succeeded"]
    if failed:
        listed = ", ".join(f"{d['id']} {d['state']}: {d.get('error') or ''}" for d in failed)
        raise CliError(f"{len(failed)} re-evaluation job(s) did not succeed: {listed}")


@report.command()
@scope_options
@pick_option
@output_options
@click.option("--reevaluate", is_flag=True,
              help="First queue re-evaluation jobs for these adapters (one resident base per job); "
              "the report's drift column compares their scores with the jobs' own.")
@click.option("--wait", is_flag=True, help="With --reevaluate: wait for those jobs, then report.")
def benchmark(pick: str, fmt: str, out: Path | None, as_json: bool, reevaluate: bool, wait: bool,
              **scope: Any) -> None:
    """Tenants × tasks: each adapter's primary metric, GLUE average, published references."""
    from orchestrator.reports import benchmark_report

    if wait and not reevaluate:
        raise click.UsageError("--wait waits for the jobs --reevaluate queues: give --reevaluate too")
    fmt, out = _format(fmt, as_json), _out_file(out)
    filters = _filters(scope)
    if reevaluate:
        _queue_reevaluation(scope, wait)
    with open_session() as session:
        result = benchmark_report(session, filters, pick)
    _emit(result, fmt, out)


@report.command()
@scope_options
@price_option
@output_options
def cost(prices: dict[str, float], fmt: str, out: Path | None, as_json: bool, **scope: Any) -> None:
    """Per tenant and in total: jobs, device-hours, money, storage, unit costs."""
    from orchestrator.reports import cost_report

    fmt, out = _format(fmt, as_json), _out_file(out)
    filters = _filters(scope)
    all_prices, storage_price = _prices(prices)
    with open_session() as session:
        result = cost_report(session, filters, all_prices, storage_price, with_points=fmt == "html")
    _emit(result, fmt, out)


@report.command()
@scope_options
@output_options
def compare(fmt: str, out: Path | None, as_json: bool, **scope: Any) -> None:
    """Per task and base model: untuned base, LoRA ranks, rsLoRA, DoRA and full, side by side."""
    from orchestrator.reports import compare_report

    fmt, out = _format(fmt, as_json), _out_file(out)
    filters = _filters(scope)
    with open_session() as session:
        result = compare_report(session, filters)
    _emit(result, fmt, out)


@report.command(name="all")
@scope_options
@pick_option
@price_option
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder to write into (created if missing).",
)
def all_reports(pick: str, prices: dict[str, float], out: Path, **scope: Any) -> None:
    """Write benchmark, cost and compare in every format into --out, plus one report.html.

    The folder appears whole or not at all: a new one, an empty one, or one an earlier `report
    all` wrote (its files are replaced together); a folder holding anything else is refused.
    """
    from orchestrator.config import get_settings
    from orchestrator.destinations import folder_destination
    from orchestrator.reports.files import FILE_NAMES, build_all, write_all

    folder = folder_destination(out, get_settings(), "report all --out", may_hold=FILE_NAMES,
                                allowed="a new or empty folder, or one an earlier `report all` wrote")
    filters = _filters(scope)
    all_prices, storage_price = _prices(prices)
    with open_session() as session:
        # Every report is built before anything is written: a bad request writes nothing.
        reports = build_all(
            session, filters, pick=pick, prices=all_prices, storage_price_gb_month=storage_price
        )
    for path in _writing("report all --out", out, lambda: write_all(folder, reports)):
        echo(str(path))
