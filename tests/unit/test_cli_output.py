"""Terminal output: the formats of ids, times, sizes and durations; tables that fit 80 columns;
and the one resolver of short id prefixes (on SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import inspect

from orchestrator.cli.output import Column, ago, duration, human_bytes, print_table
from orchestrator.errors import InvalidInput, NotFound
from orchestrator.registry.models import Job
from orchestrator.services.jobs import get_job, submit_job
from orchestrator.services.tenants import create_tenant

pytest_plugins = ["registry_fixtures"]


def test_formats():
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    assert ago((now - timedelta(seconds=42)).isoformat(), now=now) == "42s ago"
    assert ago(now - timedelta(hours=3, minutes=5), now=now) == "3h05m ago"
    assert ago(now.isoformat(), wide=True) == "2026-12-01T12:00:00+00:00"
    assert [duration(s) for s in (5, 723, 3 * 3600 + 300, 2 * 86400 + 4 * 3600)] == [
        "5s", "12m03s", "3h05m", "2d04h"]
    assert [human_bytes(b) for b in (512, 29_392, 912_000_000)] == ["512 B", "29.4 kB", "912.0 MB"]


def test_tables_fit_80_columns_and_wide_shows_everything(capsys):
    rows = [{"id": "3f2a1b9c-aaaa-bbbb-cccc-1234567890ab", "state": "failed",
             "error": "x" * 200, "secret": "only-wide"}]
    columns = [Column("id"), Column("state"), Column("error", flexible=True),
               Column("secret", wide_only=True)]
    print_table(rows, columns)
    out = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in out) <= 80
    assert out[2].split()[:2] == ["3f2a1b9c", "failed"] and out[2].rstrip().endswith("…")
    assert "only-wide" not in "\n".join(out)
    print_table(rows, columns, wide=True)
    wide = capsys.readouterr().out
    assert "3f2a1b9c-aaaa-bbbb-cccc-1234567890ab" in wide and "x" * 200 in wide and "only-wide" in wide


def _clone_job(session, job: Job, new_id: str) -> None:
    """A second real job row with an id we choose (ids are random otherwise)."""
    columns = {a.key: getattr(job, a.key) for a in inspect(Job).mapper.column_attrs}
    session.add(Job(**{**columns, "id": new_id, "idempotency_key": None}))
    session.commit()


def test_short_prefixes_resolve_when_unique(session):
    create_tenant(session, "acme")
    job = submit_job(session, "acme", {"task": "sst2", "base_model": "tiny-bert", "max_steps": 2})
    _clone_job(session, job, "abcd1234-0000-4000-8000-000000000001")
    _clone_job(session, job, "abcd9999-0000-4000-8000-000000000002")
    assert get_job(session, job.id[:6]).job.id == job.id
    assert get_job(session, "ABCD12").job.id == "abcd1234-0000-4000-8000-000000000001"
    with pytest.raises(InvalidInput, match=r"job id prefix 'abcd' is ambiguous: it starts abcd1234-000, "
                                           r"abcd9999-000; give more characters"):
        get_job(session, "abcd")
    with pytest.raises(NotFound, match="no job 'abc'"):  # under 4 characters: never a prefix
        get_job(session, "abc")
    with pytest.raises(NotFound, match="no job 'ab%d'"):  # LIKE wildcards are plain characters
        get_job(session, "ab%d")
    with pytest.raises(NotFound):
        get_job(session, job.id[:6], tenant="nobody")


def test_every_command_shows_an_example_in_its_help():
    import click

    from orchestrator.cli.main import cli

    def commands(ctx, path=()):
        group = ctx.command
        for name in group.list_commands(ctx):  # the lazy groups load each command as it is looked up
            command = group.get_command(ctx, name)
            if isinstance(command, click.Group):
                yield from commands(click.Context(command, info_name=name, parent=ctx), (*path, name))
            else:
                yield " ".join((*path, name)), command

    missing = [name for name, command in commands(click.Context(cli, info_name="lorafleet"))
               if "Example" not in (command.help or "") + (command.epilog or "")]
    assert missing == [], f"commands without an example (add one to cli/examples.py): {missing}"


def test_the_status_line_names_the_phase_from_the_jobs_phase_events():
    """loading before the first step, training while steps come, evaluating / saving from the
    worker's `phase` events until a later step (an evaluation during training) or the end."""
    from orchestrator.cli.live import Phase, Rate, progress_text

    def view(step, total=40, state="running"):
        return {"state": state, "progress": {"step": step, "total": total, "loss": 0.5}, "spec": {}}

    current, rate = Phase(), Rate()

    def line(v):
        return progress_text({**v, "phase": current.of(v)}, rate)

    assert line(view(None)).startswith("loading")
    assert line(view(12)).startswith("training  step 12/40  loss 0.5")
    current.see({"kind": "phase", "data": {"phase": "evaluating", "step": 20}})
    assert line(view(20)).startswith("evaluating  step 20/40")
    assert line(view(21)).startswith("training  step 21/40")  # trained on after the evaluation
    current.see({"kind": "phase", "data": {"phase": "saving", "step": 40}})
    assert line(view(40)).startswith("saving  step 40/40")
    assert line(view(40, state="succeeded")).startswith("succeeded")
    current.see({"kind": "claimed", "data": {}})  # a retry loads again
    assert line(view(None)).startswith("loading")
