"""What lorafleet prints and writes out, with hostile strings in the registry: CSV cells that a
spreadsheet would run as formulas, the HTML report with `$\\x$` and `<script>` labels in real
Chromium, `--out` and `adapter export` destinations that must be refused (a FIFO, a link to a
device, a dangling link, the artifacts, the home), `report all` failing midway, and passwords in
`config show`. Every refusal: exit 1, a message naming the place and what is allowed, no
traceback, the registry and the artifacts dumped before and after unchanged.

The strings are written into the registry directly (as rows an older version or another door let
in): output must be safe whatever the door accepted. The terminal itself is tested in a real
pseudo-terminal in tests/integration/test_cli_terminal.py.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import resource
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from report_fixtures import SMOLLM, build_registry
from sqlalchemy import select, update

from orchestrator.cli.main import cli
from orchestrator.config import get_settings
from orchestrator.registry import db
from orchestrator.registry.models import Adapter, Job, Tenant
from orchestrator.text import FORMULA_STARTS, csv_cell, printable, redact_url

ROOT = Path(__file__).resolve().parents[2]
# A base model "folder name" that is a formula, an invalid TeX formula, a script, an attribute
# break-out, rich markup, an OSC window title, a clear-screen and a bidi override.
HOSTILE = ("=HYPERLINK(\"http://evil.example/\",\"x\") $\\x$ <script>document.title='pwned'</script>"
           "\"><img src=x onerror=\"document.title='pwned'\"> [/] \x1b]0;PWNED\x07\x1b[2J \u202eevil")


def test_the_escaping_rules():
    """The three functions by hand-worked examples, edges included."""
    texts = ("plain [/] $x$", "a\x1b]0;t\x07b", "\x9b2J", "\u202eab\u2066", "l1\nl2\tx\r", "caf\udce9",
             "\u00a0nbsp", "👩\u200d💻", "\x00\x7f\u2028")
    assert [printable(t) for t in texts] == [
        "plain [/] $x$", "a\\x1b]0;t\\x07b", "\\x9b2J", "\\u202eab\\u2066", "l1\\nl2\\tx\\r",
        "caf\\udce9", "\u00a0nbsp", "👩\u200d💻", "\\x00\\x7f\\u2028"]
    assert printable("problems:\n\t- rank\r", multiline=True) == "problems:\n\t- rank\\r"
    cells = (-0.5, 3, None, True, "=1+1", "-2+3", "+x", "@SUM(A1)", "\tx", "a=b", "")
    assert [csv_cell(v) for v in cells] == [
        "-0.5", "3", "", "True", "'=1+1", "'-2+3", "'+x", "'@SUM(A1)", "'\tx", "a=b", ""]
    assert [redact_url(u) for u in (
        "postgresql+psycopg://app:s3cr@t@db:5432/lf", "redis://:pw@h:6379/0", "redis://h:6379/0",
        "sqlite:////srv/a:b@c/registry.db", "postgresql://u@h/db?sslmode=require&password=x",
        "redis://:a@h1/0;redis://:b@h2/0")] == [
        "postgresql+psycopg://app:***@db:5432/lf", "redis://:***@h:6379/0", "redis://h:6379/0",
        "sqlite:////srv/a:b@c/registry.db", "postgresql://u@h/db?sslmode=require&password=***",
        "redis://:***@h1/0;redis://:***@h2/0"]


def dump(home: dict) -> tuple:
    """Every row of every registry table, and every file under the artifacts root with its hash."""
    with sqlite3.connect(home["registry"]) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        rows = {t: sorted(map(repr, conn.execute(f'SELECT * FROM "{t}"'))) for t in sorted(tables)}
    files = sorted((str(p), hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "")
                   for p in home["artifacts"].rglob("*"))
    return rows, files


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory):
    """An embedded home holding the report fixture's registry with HOSTILE as the base model of
    the smollm2 jobs and adapters and as globex's display name, and one adapter (acme's J1) with
    real files under the artifacts root."""
    from lora_engine.adapters.digest import adapter_files_digest
    from orchestrator.artifacts import adapter_path
    from tests.registry_fixtures import fake_adapter_files

    base = tmp_path_factory.mktemp("hostile-output")
    mp = pytest.MonkeyPatch()
    mp.setenv("LORAFLEET_HOME", str(base / "home"))
    mp.setenv("LORAFLEET_DATA_ROOTS", str(base))
    for var in ("LORAFLEET_DATABASE_URL", "LORAFLEET_BROKER_URL", "LORAFLEET_ARTIFACTS", "LORAFLEET_PRICES"):
        mp.delenv(var, raising=False)
    get_settings.cache_clear()
    settings = get_settings()
    db.upgrade(settings.database_url)
    with db.session_factory(settings.database_url)() as s:
        ids = build_registry(s)
        s.execute(update(Job).where(Job.base_model == SMOLLM).values(base_model=HOSTILE))
        s.execute(update(Adapter).where(Adapter.base_model == SMOLLM).values(base_model=HOSTILE))
        s.execute(update(Tenant).where(Tenant.slug == "globex").values(name=HOSTILE))
        row = s.scalars(select(Adapter).where(Adapter.id == ids["J1.adapter"])).one()
        folder = fake_adapter_files(adapter_path(settings, row.tenant_id, row.id))
        row.path, (row.sha256, row.bytes) = str(folder), adapter_files_digest(folder)
        s.commit()
    yield {"base": base, "home": settings.home, "registry": settings.home / "registry.db",
           "artifacts": settings.artifacts, "adapter": ids["J1.adapter"]}
    db.forget_engine(settings.database_url)
    mp.undo()
    get_settings.cache_clear()


def lorafleet(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def reports(hostile) -> Path:
    out = hostile["base"] / "reports"
    result = lorafleet("report", "all", "--out", str(out))
    assert result.exit_code == 0, result.output + result.stderr
    return out


def test_csv_cells_never_start_a_formula_and_numbers_stay_numbers(reports: Path):
    cells = [cell for name in ("benchmark", "cost", "compare")
             for row in csv.reader(io.StringIO((reports / f"{name}.csv").read_text(encoding="utf-8")))
             for cell in row]

    def number(cell: str) -> bool:
        try:
            float(cell)
        except ValueError:
            return False
        return True

    formulas = [c for c in cells if c.startswith(FORMULA_STARTS) and not number(c)]
    assert formulas == []
    assert "'" + HOSTILE in cells  # the data kept whole, behind the apostrophe
    # A negative figure (initech's re-evaluation drift, 0.78125 - 0.8125) is a number, not text.
    assert "-0.03125" in cells


def test_html_report_shows_hostile_labels_as_text_in_chromium(reports: Path):
    """The charts are drawn (no mathtext crash on `$\\x$`), no script of a label runs, and the
    labels read literally, escaped where they hold control characters."""
    from browser import open_page

    page = open_page(reports / "report.html")
    assert page.title == "lorafleet report"  # neither <script> nor onerror ran
    assert page.errors == []
    assert len(page.images) == 6 and all(i["complete"] and i["width"] > 0 for i in page.images)
    assert printable(HOSTILE) in page.text
    for name in ("report.html", "compare.md", "compare.txt"):
        text = (reports / name).read_text(encoding="utf-8")
        assert "\x1b" not in text and "\u202e" not in text and "\x07" not in text, name


def test_report_out_refuses_places_that_are_not_a_regular_file(hostile, tmp_path: Path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    device = tmp_path / "null"
    device.symlink_to("/dev/null")  # a character device, reached through a link we own
    dangling = tmp_path / "dangling.csv"
    dangling.symlink_to(tmp_path / "missing" / "x.csv")
    folder = tmp_path / "folder"
    folder.mkdir()
    registry = hostile["registry"]
    cases = {
        fifo: "is a FIFO (named pipe); give the path of a new or existing regular file",
        device: "(where the link",  # ... points) is a character device
        dangling: "which leads nowhere",
        hostile["artifacts"] / "report.csv": "is inside the artifacts root",
        registry: "is inside the lorafleet home",
    }
    before = dump(hostile)
    for out, message in cases.items():
        result = lorafleet("report", "cost", "--format", "csv", "--out", str(out))
        assert result.exit_code == 1, (out, result.output)
        assert message in result.stderr and "Traceback" not in result.output + result.stderr, result.stderr
    assert "character device" in lorafleet("report", "cost", "--out", str(device)).stderr
    into_folder = lorafleet("report", "cost", "--out", str(folder))  # Click's own check, a usage error
    assert into_folder.exit_code == 2 and "is a directory" in into_folder.stderr
    assert dump(hostile) == before
    assert fifo.is_fifo() and os.readlink(device) == "/dev/null" and dangling.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling.csv", "folder", "null", "pipe"]
    # A regular file, and a link to one, are written (through the link: it stays a link).
    target = tmp_path / "folder" / "cost.csv"
    target.write_text("old")
    (tmp_path / "latest.csv").symlink_to(target)
    written = lorafleet("report", "cost", "--format", "csv", "--out", str(tmp_path / "latest.csv"))
    assert written.exit_code == 0, written.stderr
    assert target.read_text().startswith("section,") and (tmp_path / "latest.csv").is_symlink()


def _report_all_limited(out: Path, max_file_bytes: int) -> subprocess.CompletedProcess[str]:
    """`report all --out OUT` (e2e only: fewer charts to draw) in a process that may write no file
    larger than `max_file_bytes`: the disk fills up halfway (benchmark.txt, .md, .csv and .json
    fit, benchmark.html with its charts does not)."""

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

    command = [sys.executable, "-m", "orchestrator.cli.main", "report", "all", "--task", "e2e",
               "--out", str(out)]
    return subprocess.run(command, cwd=ROOT, env=os.environ.copy(), preexec_fn=limit, capture_output=True,
                          text=True, timeout=120)


def test_report_all_writes_a_whole_folder_or_nothing(hostile, reports: Path, tmp_path: Path):
    # An earlier `report all`: a failing run leaves it exactly as it was.
    previous = tmp_path / "previous"
    previous.mkdir()
    for p in reports.iterdir():
        (previous / p.name).write_bytes(p.read_bytes())
    kept = {p.name: p.read_bytes() for p in previous.iterdir()}
    before = dump(hostile)
    for out in (previous, tmp_path / "new"):
        failed = _report_all_limited(out, 20_000)
        assert failed.returncode == 1, failed.stdout + failed.stderr
        assert "cannot write" in failed.stderr and "nothing was written" in failed.stderr
        assert "Traceback" not in failed.stderr
    assert {p.name: p.read_bytes() for p in previous.iterdir()} == kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["previous"]  # no new folder, no temp folder
    # A folder holding anything else is refused, untouched.
    (previous / "notes.txt").write_text("mine")
    refused = lorafleet("report", "all", "--out", str(previous))
    assert refused.exit_code == 1 and "is not empty (it holds notes.txt)" in refused.stderr
    assert "or one an earlier `report all` wrote" in refused.stderr
    assert (previous / "notes.txt").read_text() == "mine"
    assert dump(hostile) == before
    # An earlier report folder is replaced whole by a run that succeeds.
    (previous / "notes.txt").unlink()
    assert lorafleet("report", "all", "--task", "e2e", "--out", str(previous)).exit_code == 0
    assert sorted(p.name for p in previous.iterdir()) == sorted(kept)


def test_adapter_export_refuses_places_it_must_not_write(hostile, tmp_path: Path):
    adapter = hostile["adapter"]
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    device = tmp_path / "null"
    device.symlink_to("/dev/null")
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "missing")
    cases = {
        dangling: "is a symbolic link to",
        tmp_path / "dangling" / "sub": "which leads nowhere (missing, or a loop of links) (on the way to",
        device: "is a character device; give a new or empty folder",
        fifo: "is a FIFO (named pipe)",
        hostile["artifacts"] / "copy": "is inside the artifacts root",
        hostile["artifacts"].parent: "is inside the lorafleet home",  # the home itself
    }
    before = dump(hostile)
    for dest, message in cases.items():
        result = lorafleet("adapter", "export", adapter, str(dest))
        assert result.exit_code == 1, (dest, result.output)
        assert message in result.stderr and "Traceback" not in result.output + result.stderr, result.stderr
    assert dump(hostile) == before
    assert not (tmp_path / "missing").exists() and fifo.is_fifo() and os.readlink(device) == "/dev/null"
    # A new folder through a link to a real folder is fine.
    (tmp_path / "real").mkdir()
    (tmp_path / "via").symlink_to(tmp_path / "real")
    done = lorafleet("adapter", "export", adapter, str(tmp_path / "via" / "out"))
    assert done.exit_code == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "real" / "out").iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors"]


def test_config_show_masks_passwords_in_urls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("LORAFLEET_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LORAFLEET_DATABASE_URL", "postgresql+psycopg://app:s3cr%40t@db:5432/lf?sslmode=require")
    monkeypatch.setenv("LORAFLEET_BROKER_URL", "redis://:hunter2@redis:6379/0")
    get_settings.cache_clear()
    try:
        table = lorafleet("config", "show")
        as_json = lorafleet("config", "show", "--json")
    finally:
        get_settings.cache_clear()
    assert table.exit_code == 0 and as_json.exit_code == 0
    for out in (table.stdout, as_json.stdout):
        assert "s3cr" not in out and "hunter2" not in out
    assert "postgresql+psycopg://app:***@db:5432/lf?sslmode=require" in as_json.stdout
    assert "redis://:***@redis:6379/0" in as_json.stdout
    # A URL that is refused is explained without its password too.
    monkeypatch.setenv("LORAFLEET_DATABASE_URL", "mysql://app:s3cret@db/lf")
    get_settings.cache_clear()
    try:
        bad = lorafleet("config", "show")
    finally:
        get_settings.cache_clear()
    assert bad.exit_code == 1 and "'mysql://app:***@db/lf' is not valid" in bad.stderr
    assert "s3cret" not in bad.stderr
