"""What a person sees: `job submit --wait` and `job events --follow` in a real pseudo-terminal
(tmux), against a real embedded worker. Assertions are on the screen: the job id comes first, the
status line shows the loss and the gradient norm and never carries event text, Ctrl-C detaches
and says how to re-attach. Piped, the same commands print one plain line per event; `job wait` exits 0 only if
every job succeeded. Hostile strings in the registry (escape sequences, rich markup) reach the
terminal escaped, every command that shows them exits 0, and the terminal's title is untouched."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.workers import (
    ROOT,
    WORKER_START_TIMEOUT_S,
    start_worker,
    stop_worker,
    wait_for,
    worker_env,
)

pytestmark = pytest.mark.integration

LORAFLEET = f"{sys.executable} -m orchestrator.cli.main"
TINY_JOB = ("--tenant acme --task sst2 --base-model tiny-bert --rank 4 --batch-size 8 --eval-size 16")
EVENT_TEXT = ("claimed by", "checkpoint at", "adapter ", "submitted", "cancel requested")
BAR = "━"
STEPS = 40


class Screen:
    """One command in a detached tmux session of a fixed size; the screen read back as text.

    `raw`: a file that receives every byte the command writes to the terminal (tmux pipe-pane,
    set up before the command starts), to check what reached the terminal, not how it looks."""

    def __init__(self, env: dict[str, str], command: str, *, width: int = 110, height: int = 40,
                 raw: Path | None = None):
        self.socket = f"lorafleet-test-{os.getpid()}-{time.monotonic_ns()}"
        self.env = env
        gate = f"while [ ! -e {raw}.go ]; do sleep 0.05; done; " if raw else ""
        script = f"{gate}cd {ROOT} && {command}; echo EXIT=$?; sleep 600"
        self._tmux("new-session", "-d", "-s", "t", "-x", str(width), "-y", str(height), script)
        if raw is not None:
            self._tmux("pipe-pane", "-t", "t", "-o", f"cat >> {raw}")
            Path(f"{raw}.go").touch()

    def _tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-f", "/dev/null", "-L", self.socket, *args], env=self.env,
                              capture_output=True, text=True, check=True).stdout

    def text(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", "t", "-S", "-500")

    def lines(self) -> list[str]:
        return [line.rstrip() for line in self.text().splitlines() if line.strip()]

    def wait_for(self, pattern: str, timeout: float = 90) -> re.Match[str]:
        return wait_for(lambda: re.search(pattern, self.text()), timeout, f"{pattern!r} on the screen:\n"
                        + "\n".join(self.lines()[-20:]))

    def title(self) -> str:
        """The pane's title, which an OSC 0/2 sequence on the terminal would set."""
        return self._tmux("display-message", "-p", "-t", "t", "#{pane_title}").strip()

    def keys(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", "t", *keys)

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], env=self.env, capture_output=True)


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    home = tmp_path_factory.mktemp("lorafleet-terminal")
    # STEPS steps: enough for the live line to redraw many times and a checkpoint event to land
    # under it (at the last step), few enough that the run is short.
    env = {**worker_env(home), "LORAFLEET_CHECKPOINT_EVERY": str(STEPS), "LORAFLEET_LOG_FORMAT": "json",
           "LORAFLEET_METRICS_PORT": str(free_port())}
    proc = start_worker(env, home / "worker.log")
    try:
        wait_for(lambda: " ready." in (home / "worker.log").read_text(), WORKER_START_TIMEOUT_S,
                 "the worker to start")
        assert cli(env, "tenant", "create", "acme").returncode == 0
        yield {**env, "WORKER_LOG": str(home / "worker.log")}
    finally:
        stop_worker(proc)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli.main", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def bar_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if BAR in line]


def test_submit_wait_shows_the_id_first_and_the_loss_on_a_clean_status_line(embedded):
    screen = Screen(embedded, f"{LORAFLEET} job submit {TINY_JOB} --max-steps {STEPS} --wait")
    try:
        exit_code = screen.wait_for(r"EXIT=(\d+)").group(1)
        lines = screen.lines()
    finally:
        screen.close()
    assert exit_code == "0", "\n".join(lines)
    first = re.fullmatch(r"job ([0-9a-f-]{36}) queued .*Ctrl-C detaches.*", lines[0])
    assert first, lines[:3]
    job_id = first.group(1)
    bars = bar_lines(lines)
    assert bars, "no status line on the screen:\n" + "\n".join(lines)
    for line in bars:
        assert not any(text in line for text in EVENT_TEXT), f"event text inside the status line: {line!r}"
    # The loss and the gradient norm before clipping (the last progress event's).
    assert re.search(rf"succeeded\s+step {STEPS}/{STEPS}\s+loss \S+\s+grad norm \d", bars[-1]), bars[-1]
    # Events appear above the status line, each on its own line.
    assert any(re.fullmatch(r"\d\d:\d\d:\d\d  claimed\s+claimed by .*", line) for line in lines), lines
    assert re.fullmatch(rf"succeeded in \S+: acc [0-9.]+; adapter [0-9a-f]{{8}} \(.*\)\. More: lorafleet "
                        rf"job show {job_id[:8]}", lines[-2]), lines[-2]

    # Piped, `--follow` prints one plain line per event (no escape codes, no bar); a prefix works.
    piped = cli(embedded, "job", "events", "--follow", job_id[:6])
    assert piped.returncode == 0, piped.stderr
    assert "\x1b[" not in piped.stdout and BAR not in piped.stdout
    kinds = [re.fullmatch(r"\d\d:\d\d:\d\d  (\w+)\s+.*", line).group(1) for line in piped.stdout.splitlines()]
    assert kinds[:2] == ["submitted", "claimed"] and kinds[-1] == "succeeded" and "progress" in kinds
    # Between the last step and the outcome: the final evaluation, then the saving.
    assert [line.split(None, 2)[2] for line in piped.stdout.splitlines()[-3:-1]] == [
        f"evaluating at step {STEPS}", f"saving the adapter at step {STEPS}"]
    assert cli(embedded, "job", "wait", job_id[:8]).returncode == 0

    # JSON worker logs: one object per line, the job's lines carry its job and tenant ids.
    records = [json.loads(line) for line in Path(embedded["WORKER_LOG"]).read_text().splitlines()
               if line.startswith("{")]
    claimed = [r for r in records if r["message"].startswith("claimed train job " + job_id)]
    assert claimed and claimed[0]["job_id"] == job_id and claimed[0]["tenant_id"]
    assert {r["job_id"] for r in records if job_id in r["message"]} == {job_id}
    # Prometheus metrics of the worker: its outcomes, and the registry's jobs by state and tenant.
    import urllib.request

    port = embedded["LORAFLEET_METRICS_PORT"]
    scraped = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert re.search(r'^lorafleet_worker_jobs_total\{outcome="succeeded"\} [1-9]', scraped, re.M), scraped
    tenant_id = json.loads(cli(embedded, "tenant", "show", "acme", "--json").stdout)["id"]
    assert re.search(rf'^lorafleet_jobs\{{state="succeeded",tenant_id="{tenant_id}"\}} [1-9]', scraped, re.M)
    assert "acme" not in scraped  # tenants by id, never by name
    assert re.search(r"^lorafleet_queue_depth 0", scraped, re.M)
    assert re.search(r'^lorafleet_worker_device_memory_bytes\{kind="(rss|allocated)"\} [1-9]', scraped, re.M)

    # The worker recorded every step's loss, lr and gradient norm (metric history), read back by
    # `job metrics`.
    curves = json.loads(cli(embedded, "job", "metrics", job_id, "--format", "json").stdout)
    assert set(curves) == {"loss", "lr", "grad_norm"}
    assert [p["step"] for p in curves["loss"]] == [p["step"] for p in curves["grad_norm"]] == list(
        range(1, STEPS + 1))
    epochs = [p["epoch"] for p in curves["loss"]]
    assert epochs == sorted(epochs) and 0 < epochs[0] < epochs[-1]
    assert all(p["value"] > 0 for p in curves["lr"]) and curves["lr"][-1]["value"] < max(
        p["value"] for p in curves["lr"])  # the schedule decays


def test_ctrl_c_detaches_from_follow_and_job_wait_reports_the_outcome(embedded):
    submitted = cli(embedded, "job", "submit", *TINY_JOB.split(), "--max-steps", "100000")
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    screen = Screen(embedded, f"{LORAFLEET} job events --follow {job_id[:8]}")
    try:
        screen.wait_for(r"training\s+step \d+/100000\s+loss \d")
        lines = screen.lines()
        screen.keys("C-c")
        exit_code = screen.wait_for(r"EXIT=(\d+)").group(1)
        after = screen.lines()
    finally:
        screen.close()
    for line in bar_lines(lines):
        assert not any(text in line for text in EVENT_TEXT), f"event text inside the status line: {line!r}"
    assert exit_code == "130"
    assert f"detached: the job keeps running. Re-attach: lorafleet job events --follow {job_id}" in after
    shown = json.loads(cli(embedded, "job", "show", job_id, "--json").stdout)
    assert shown["state"] == "running"  # detaching did not stop it

    assert cli(embedded, "job", "cancel", job_id).returncode == 0
    waited = cli(embedded, "job", "wait", job_id)
    assert waited.returncode == 1
    assert re.match(rf"{job_id}  cancelled", waited.stdout), waited.stdout
    assert "1 of 1 jobs did not succeed" in waited.stderr
    unknown = cli(embedded, "job", "wait", "0000dead")
    assert unknown.returncode == 3 and "no job '0000dead'" in unknown.stderr


def test_short_prefixes_resolve_when_unique(embedded, tmp_path: Path):
    listed = json.loads(cli(embedded, "job", "list", "--json").stdout)
    ids = [j["id"] for j in listed]
    assert len(ids) >= 2
    shown = json.loads(cli(embedded, "job", "show", ids[0][:5], "--json").stdout)
    assert shown["id"] == ids[0]
    # The table fits 80 columns and shows short ids.
    table = cli(embedded, "job", "list").stdout.splitlines()
    assert max(len(line.rstrip()) for line in table) <= 80
    assert table[0].split()[:3] == ["ID", "TENANT", "STATE"] and table[2].split()[0] == ids[0][:8]


def test_the_glue_walkthrough_script(embedded, tmp_path: Path):
    """examples/glue_five_tasks.sh end to end, on a tiny copy of its batch file (same items)."""
    import yaml

    items = yaml.safe_load((ROOT / "examples" / "glue_five_tasks.yaml").read_text())
    tiny = {"base_model": "tiny-bert", "max_steps": 2, "batch_size": 4, "eval_size": 8}
    for item in items:
        target = item.get("spec", item)
        target.pop("epochs", None)
        target.update(tiny)
        item.pop("idempotency_key", None)
    batch = tmp_path / "tiny.yaml"
    batch.write_text(yaml.safe_dump(items))
    env = {**embedded, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{embedded['PATH']}",
           "INIT_FROM_OPTIONS": "--max-steps 2 --batch-size 4 --eval-size 8"}
    out = subprocess.run(["sh", str(ROOT / "examples" / "glue_five_tasks.sh"), str(batch)], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    adapters = json.loads(cli(embedded, "adapter", "list", "--tenant", "acme", "--json").stdout)
    by_task = {}
    for a in adapters:
        by_task.setdefault(a["task"], []).append(a)
    assert {"cola", "sst2", "mrpc", "stsb", "rte"} <= set(by_task)
    second = by_task["sst2"][-1]
    assert second["parent_adapter_id"] == by_task["sst2"][-2]["id"]  # --init-from recorded the lineage


# Terminal escapes a tenant could hide in a name, a file name, a folder name or a label: an OSC
# window title, an OSC 52 clipboard write, a clear-screen, a one-byte C1 CSI, a bidi override,
# and rich markup that crashed the tables (`[/]` closes a tag never opened).
HOSTILE = ("[/]\x1b]0;PWNED\x07\x1b]52;c;cHduZWQ=\x07\x1b[2J\x9b31m\u202eevil[bold]x")
# Commands run one after the other in one process on the pseudo-terminal (one start-up, not 13).
DRIVER = """
import json, sys
from orchestrator.cli.main import cli
for args in json.load(open(sys.argv[1])):
    try:
        cli.main(args, prog_name="lorafleet")
    except SystemExit as exc:
        print(f"EXIT {' '.join(args[:2])}={exc.code or 0}", flush=True)
"""


def seed_hostile_registry(env: dict[str, str]) -> dict[str, str]:
    """The report fixture's registry with HOSTILE as globex's display name, the base model of
    its e2e job and adapter, a failed job's error and events, and a data set's file name and
    label: rows as an older version, or another door, may have let in. Returns the ids used."""
    from sqlalchemy import select, update

    from orchestrator.config import load_settings
    from orchestrator.registry import db
    from orchestrator.registry.models import Adapter, Dataset, Job, JobEvent, Tenant
    from tests.report_fixtures import SMOLLM, build_registry

    url = load_settings(env).database_url
    db.upgrade(url)
    try:
        with db.session_factory(url)() as s:
            ids = build_registry(s)
            s.execute(update(Tenant).where(Tenant.slug == "globex").values(name=HOSTILE))
            s.execute(update(Job).where(Job.base_model == SMOLLM).values(base_model=HOSTILE))
            s.execute(update(Adapter).where(Adapter.base_model == SMOLLM).values(base_model=HOSTILE))
            failed = s.scalars(select(Job).where(Job.id == ids["J4"])).one()
            failed.error = HOSTILE
            s.add_all(JobEvent(job_id=failed.id, tenant_id=failed.tenant_id, kind=kind, message=HOSTILE,
                               data=data) for kind, data in (("phase", {"phase": HOSTILE, "step": 1}),
                                                             ("failed", None)))
            dataset = Dataset(tenant_id=failed.tenant_id, kind="classification", name=HOSTILE, path="/d",
                              sha256="0" * 64, bytes=10, rows=8, label_counts={HOSTILE: 3, "ok": 5},
                              token_estimate=80)
            s.add(dataset)
            s.commit()
            return {"job": failed.id, "adapter": ids["J15.adapter"], "dataset": dataset.id}
    finally:
        db.forget_engine(url)


def test_hostile_strings_reach_the_terminal_escaped(tmp_path: Path):
    home = tmp_path / "home"
    env = worker_env(home)
    ids = seed_hostile_registry(env)
    commands = [["tenant", "list"], ["tenant", "show", "globex"], ["dataset", "list"],
                ["dataset", "show", ids["dataset"]], ["job", "list"], ["job", "list", "--wide"],
                ["job", "show", ids["job"]], ["job", "events", ids["job"]],
                ["job", "events", "--follow", ids["job"]], ["adapter", "list"],
                ["adapter", "show", ids["adapter"]], ["report", "compare"], ["status"]]
    (tmp_path / "commands.json").write_text(json.dumps(commands))
    (tmp_path / "driver.py").write_text(DRIVER)
    raw = tmp_path / "raw"
    screen = Screen(env, f"{sys.executable} {tmp_path / 'driver.py'} {tmp_path / 'commands.json'}",
                    width=200, height=50, raw=raw)
    try:
        screen.wait_for(r"EXIT=(\d+)\s*$", timeout=120)
        shown, title = screen.text(), screen.title()
    finally:
        screen.close()
    exits = re.findall(r"EXIT (\S+ ?\S*)=(\d+)", shown)
    assert len(exits) == len(commands) and all(code == "0" for _, code in exits), shown
    assert "PWNED" not in title  # no OSC title reached the terminal
    received = raw.read_bytes().decode("utf-8", errors="replace")
    for sequence in ("\x1b]", "\x07", "\x1b[2J", "\x9b", "\u202e"):  # OSC, BEL, clear, C1 CSI, bidi
        assert sequence not in received, f"{sequence!r} reached the terminal raw"
    escaped = "[/]\\x1b]0;PWNED\\x07\\x1b]52;c;cHduZWQ=\\x07\\x1b[2J\\x9b31m\\u202eevil[bold]x"
    # Seen in full in the records (tables may shorten it with an ellipsis); `[/]` as text.
    assert shown.count(escaped) >= 5, shown
    assert "[/]" in shown.split("EXIT tenant list=0")[0]
