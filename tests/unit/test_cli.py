"""The admin CLI through Click's CliRunner, on a temporary embedded home (SQLite registry and
broker). Assertions are on the registry and the broker, not on printed text."""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.cli.main import cli
from orchestrator.config import get_settings
from orchestrator.registry.db import forget_engine, session_scope
from orchestrator.services.jobs import get_job, list_jobs


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("LORAFLEET_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LORAFLEET_DATA_DIR", os.environ["LORAFLEET_DATA_DIR"])  # set by conftest
    monkeypatch.setenv("LORAFLEET_DATA_ROOTS", str(tmp_path))  # batch files are user paths too
    for var in ("LORAFLEET_DATABASE_URL", "LORAFLEET_BROKER_URL", "LORAFLEET_ARTIFACTS"):
        monkeypatch.delenv(var, raising=False)
    get_settings.cache_clear()
    yield tmp_path / "home"
    from orchestrator.dispatch import close_clients

    close_clients()
    forget_engine(get_settings().database_url)
    get_settings.cache_clear()


def run(*args: str, ok: bool = True):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output + result.stderr
    return result


def queued_messages(home: Path) -> list[dict]:
    """The Celery messages waiting in the embedded broker (kombu's SQL transport tables)."""
    with sqlite3.connect(home / "broker.db") as conn:
        payloads = [row[0] for row in conn.execute("SELECT payload FROM kombu_message WHERE visible = 1")]
    out = []
    for payload in payloads:
        message = json.loads(payload)
        body = json.loads(base64.b64decode(message["body"]))
        out.append({"task": message["headers"]["task"], "args": body[0], "kwargs": body[1]})
    return out


def test_submit_queues_a_job_and_sends_only_its_id(home: Path):
    run("tenant", "create", "acme")
    result = run(
        "job",
        "submit",
        "--tenant",
        "acme",
        "--task",
        "sst2",
        "--method",
        "dora",
        "--rank",
        "4",
        "--max-steps",
        "10",
        "--base-model",
        "tiny-bert",
        "--json",
    )
    job_id = json.loads(result.stdout)["id"]
    with session_scope() as s:
        job = get_job(s, job_id).to_dict()
        assert get_job(s, job_id).job.tracking  # in the operator's MLflow, where one is set
    assert (job["state"], job["method"], job["rank"], job["spec"]["max_steps"]) == ("queued", "dora", 4, 10)
    assert queued_messages(home) == [{"task": "lorafleet.run_job", "args": [job_id], "kwargs": {}}]

    shown = json.loads(run("job", "show", job_id, "--json").stdout)
    assert {"state", "attempts", "metrics", "adapter"} <= set(shown) and shown["adapter"] is None
    # Pausing a queued job is immediate; resuming queues it again and sends its message.
    assert json.loads(run("job", "pause", job_id, "--json").stdout)["state"] == "paused"
    assert json.loads(run("job", "list", "--state", "paused", "--json").stdout)[0]["id"] == job_id
    # A paused job moves no more until resumed: waiting on it returns (exit 1), it does not hang.
    waited = run("job", "wait", job_id, ok=False)
    assert waited.exit_code == 1 and "paused" in waited.output
    run("job", "resume", job_id)
    with session_scope() as s:
        assert get_job(s, job_id).job.state == "queued"
    assert [m["args"] for m in queued_messages(home)] == [[job_id], [job_id]]
    # Cancelling a queued job is immediate.
    run("job", "cancel", job_id)
    with session_scope() as s:
        assert get_job(s, job_id).job.state == "cancelled"
    # --no-tracking: the job stays out of the operator's MLflow server.
    untracked = json.loads(run("job", "submit", "--tenant", "acme", "--task", "sst2", "--max-steps", "10",
                               "--base-model", "tiny-bert", "--no-tracking", "--json").stdout)["id"]
    with session_scope() as s:
        assert not get_job(s, untracked).job.tracking


def test_bad_spec_lists_every_problem_and_writes_nothing(home: Path):
    run("tenant", "create", "acme")
    result = run("job", "submit", "--tenant", "acme", "--task", "sst3", "--rank", "0", "--lr", "-1", ok=False)
    assert result.exit_code == 1
    for field in ("task", "rank", "lr"):
        assert f"- {field}:" in result.stderr
    with session_scope() as s:
        assert list_jobs(s) == []
    assert not (home / "broker.db").exists() or queued_messages(home) == []


def test_submit_batch_is_all_or_nothing(home: Path, tmp_path: Path):
    run("tenant", "create", "acme")
    run("tenant", "create", "globex")
    good = [
        {"tenant": "acme", "task": t, "rank": 4, "base_model": "tiny-bert", "max_steps": 5}
        for t in ("sst2", "mrpc", "rte")
    ]
    good[2]["tracking"] = False  # out of the operator's MLflow
    bad = [*good, {"tenant": "globex", "task": "cola", "method": "qlora"},
           {"tenant": "acme", "spec": {"task": "sst2"}, "tracking": "no"}]
    (tmp_path / "bad.yaml").write_text(json.dumps(bad))  # JSON is YAML
    result = run("job", "submit-batch", str(tmp_path / "bad.yaml"), ok=False)
    assert result.exit_code == 1 and "item 3" in result.stderr
    assert "'tracking' must be true or false" in result.stderr
    with session_scope() as s:
        assert list_jobs(s) == []

    (tmp_path / "good.jsonl").write_text("\n".join(json.dumps(item) for item in good))
    ids = [
        item["id"]
        for item in json.loads(run("job", "submit-batch", str(tmp_path / "good.jsonl"), "--json").stdout)
    ]
    with session_scope() as s:
        assert sorted(j.id for j in list_jobs(s, tenant="acme", state="queued")) == sorted(ids)
        assert [get_job(s, i).job.tracking for i in ids] == [True, True, False]
        assert "tracking" not in get_job(s, ids[2]).job.spec
    assert sorted(m["args"][0] for m in queued_messages(home)) == sorted(ids)


def test_unknown_ids_and_tenants_exit_non_zero(home: Path):
    assert run("job", "show", "no-such-job", ok=False).exit_code == 3
    assert run("tenant", "show", "nobody", ok=False).exit_code == 3
    assert run("tenant", "create", "Bad Slug", ok=False).exit_code == 1
    run("tenant", "create", "acme")
    assert run("tenant", "create", "acme", ok=False).exit_code == 4
    assert json.loads(run("adapter", "list", "--json").stdout) == []


def test_worker_command_runs_one_solo_process_per_gpu():
    from orchestrator.dispatch import worker_argv

    solo = worker_argv(queue="gpu", concurrency=1, loglevel="info", hostname="gpu0@%h", beat=False)
    assert solo[:3] == ["worker", "-Q", "gpu"] and solo[solo.index("--pool") + 1] == "solo"
    assert solo[solo.index("--hostname") + 1] == "gpu0@%h" and "--beat" not in solo
    cpu = worker_argv(queue="gpu", concurrency=4, loglevel="info", hostname=None, beat=True)
    assert cpu[cpu.index("--pool") + 1] == "prefork" and cpu[cpu.index("--concurrency") + 1] == "4"
    assert "--beat" in cpu


def test_gpu_workers_split_the_visible_devices():
    from click import UsageError

    from orchestrator.cli.worker import visible_devices

    assert visible_devices(2, {}) == ["0", "1"]
    assert visible_devices(2, {"CUDA_VISIBLE_DEVICES": "2,3,5"}) == ["2", "3"]
    with pytest.raises(UsageError, match="only 1 device"):
        visible_devices(2, {"CUDA_VISIBLE_DEVICES": "7"})


def test_worker_refuses_concurrency_with_several_devices(home: Path):
    """Each prefork child would start its ranks on all K devices at once: refused before any
    process starts (its own process, so a worker it wrongly started dies with it at the timeout)."""
    from orchestrator.cli.worker import check_pool

    out = subprocess.run([sys.executable, "-m", "orchestrator.cli.main", "worker", "--devices", "2",
                          "--concurrency", "2"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert ("--concurrency 2 with --devices 2: a worker process that owns several devices runs one job "
            "at a time across all of them (--concurrency 1); for several jobs at once start several "
            "processes of 2 devices each with `--gpus N --devices 2` (N a multiple of 2), or use "
            "--concurrency without --devices") in " ".join(out.stderr.split())
    assert "started" not in out.stderr
    for devices in (None, 1):
        check_pool(devices, 4)  # one device per job: prefork children are fine (CPU machines)
    check_pool(4, 1)


def test_method_none_and_reevaluate_are_validated_before_anything_is_queued(home: Path):
    run("tenant", "create", "acme")
    job_id = json.loads(run("job", "submit", "--tenant", "acme", "--task", "sst2", "--method", "none",
                            "--base-model", "tiny-bert", "--json").stdout)["id"]
    with session_scope() as s:
        job = get_job(s, job_id).to_dict()
    assert (job["kind"], job["method"], job["rank"]) == ("evaluate", "none", 0)
    bad = run("job", "submit", "--tenant", "acme", "--task", "sst2", "--method", "none", "--rank", "4",
              ok=False)
    assert bad.exit_code == 1 and "- rank: method 'none' trains nothing" in bad.stderr

    result = run("report", "benchmark", "--reevaluate", "--tenant", "acme", ok=False)
    assert result.exit_code == 1 and "nothing to re-evaluate" in result.stderr
    assert "Traceback" not in result.output + result.stderr
    assert run("report", "benchmark", "--wait", ok=False).exit_code == 2
    with session_scope() as s:
        assert [j.id for j in list_jobs(s)] == [job_id]


def test_every_spec_field_is_reachable_and_dry_run_writes_nothing(home: Path):
    from lora_engine.spec import TrainingSpec

    run("tenant", "create", "acme")
    help_text = run("job", "submit", "--help").stdout
    for name in TrainingSpec.model_fields:
        assert f"--{name.replace('_', '-')}" in help_text
    plan = json.loads(run("job", "submit", "--tenant", "acme", "--task", "sst2", "--base-model", "tiny-bert",
                          "--max-steps", "5", "--grad-accum", "2", "--set", "warmup_ratio=0.25", "--dry-run",
                          "--json").stdout)
    assert plan["spec"]["warmup_ratio"] == 0.25 and plan["spec"]["grad_accum"] == 2
    assert plan["spec"]["pooling"] == "cls"  # auto, resolved: tiny-bert's own (HF's [CLS] head)
    assert plan["estimate"]["examples"] == 5 * 32 * 2 and plan["estimate"]["device_seconds"] is None
    assert "no earlier job" in plan["estimate"]["basis"] and plan["written"] is False
    # The auto budget, for people: the rows held out for evaluation are named, not trained on.
    auto = json.loads(run("job", "submit", "--tenant", "acme", "--task", "sst2", "--base-model", "tiny-bert",
                          "--dry-run", "--json").stdout)
    held, rows = auto["spec"]["eval_holdout"], auto["estimate"]["train_rows"]
    assert held > 0 and auto["estimate"]["examples"] == auto["spec"]["epochs"] * (rows - held)
    text = run("job", "submit", "--tenant", "acme", "--task", "sst2", "--base-model", "tiny-bert",
               "--dry-run").stdout
    assert f"({rows} training rows, {held} of them held out for evaluation)" in text
    with session_scope() as s:
        assert list_jobs(s) == []
    assert not (home / "broker.db").exists() or queued_messages(home) == []


def test_broker_down_still_prints_the_committed_job_and_no_traceback(home: Path, monkeypatch):
    run("tenant", "create", "acme")
    monkeypatch.setenv("LORAFLEET_BROKER_URL", "redis://127.0.0.1:1/0")  # nothing listens there
    get_settings.cache_clear()
    result = run("job", "submit", "--tenant", "acme", "--task", "sst2", "--base-model", "tiny-bert",
                 "--max-steps", "5", "--idempotency-key", "nightly-1")
    job_id = result.stdout.strip()
    assert "reconciler" in result.stderr and "Traceback" not in result.stderr
    again = run("job", "submit", "--tenant", "acme", "--task", "sst2", "--base-model", "tiny-bert",
                "--max-steps", "5", "--idempotency-key", "nightly-1")
    assert again.stdout.strip() == job_id  # a retrying script gets the same job, not a duplicate
    with session_scope() as s:
        assert [j.id for j in list_jobs(s)] == [job_id]


def test_job_list_is_paged_newest_first(home: Path, tmp_path: Path):
    run("tenant", "create", "acme")
    items = [{"tenant": "acme", "task": "sst2", "base_model": "tiny-bert", "max_steps": 1 + i}
             for i in range(60)]
    (tmp_path / "many.jsonl").write_text("\n".join(json.dumps(i) for i in items))
    run("job", "submit-batch", str(tmp_path / "many.jsonl"))
    first = run("job", "list", "--json")
    assert len(json.loads(first.stdout)) == 50 and "--offset 50" in first.stderr  # the default page
    rest = json.loads(run("job", "list", "--json", "--offset", "50").stdout)
    page = json.loads(run("job", "list", "--json", "--limit", "5").stdout)
    assert len(rest) == 10 and len(page) == 5
    ids = [j["id"] for j in json.loads(first.stdout)] + [j["id"] for j in rest]
    assert len(set(ids)) == 60


def test_json_output_never_prints_nan(home: Path):
    from sqlalchemy import update

    from orchestrator.registry.models import Job

    run("tenant", "create", "acme")
    submitted = run("job", "submit", "--tenant", "acme", "--task", "sst2", "--base-model", "tiny-bert",
                    "--max-steps", "5", "--json")
    job_id = json.loads(submitted.stdout)["id"]
    with session_scope() as s:  # a diverged run's last loss
        s.execute(update(Job).where(Job.id == job_id).values(last_loss=float("nan")))
        s.commit()

    def strict(text: str):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))

    assert strict(run("job", "list", "--json").stdout)[0]["id"] == job_id
    assert strict(run("job", "show", job_id, "--json").stdout)["id"] == job_id


def succeeded_adapter(adapter_id: str) -> tuple[Path, str, int]:
    """A tenant `acme` with one succeeded sst2 job whose adapter (registry-shaped files, real
    sha256) is `adapter_id`: (its folder, sha256, bytes)."""
    from lora_engine.adapters.digest import adapter_files_digest
    from orchestrator.services.adapters import new_adapter_path
    from orchestrator.services.jobs import submit_job
    from orchestrator.services.leases import AdapterRecord, claim_job, finish_job_success
    from tests.registry_fixtures import fake_adapter_files

    run("tenant", "create", "acme")
    with session_scope() as s:
        job = submit_job(s, "acme", {"task": "sst2", "rank": 4, "base_model": "tiny-bert", "max_steps": 2})
        claim_job(s, job.id, "w1", 60)
        path = fake_adapter_files(new_adapter_path(get_settings(), job.tenant_id, adapter_id))
        sha, size = adapter_files_digest(path)
        finish_job_success(s, job.id, "w1", AdapterRecord(adapter_id, str(path), sha, size, 1, 2),
                           {"validation": {"accuracy": 0.5}})
    return path, sha, size


def test_adapter_show_and_list_print_the_model_name(home: Path):
    adapter_id = "00000000-0000-4000-8000-000000000003"
    succeeded_adapter(adapter_id)
    model = f"ft:tiny-bert:acme:sst2:{adapter_id}"
    assert json.loads(run("adapter", "show", adapter_id, "--json").stdout)["model"] == model
    assert json.loads(run("adapter", "show", model, "--json").stdout)["id"] == adapter_id  # by its name too
    assert [a["model"] for a in json.loads(run("adapter", "list", "--json").stdout)] == [model]


def test_report_benchmark_reevaluate_queues_one_job_per_base_and_sends_it(home: Path):
    adapter_id = "00000000-0000-4000-8000-000000000001"
    succeeded_adapter(adapter_id)
    result = run("report", "benchmark", "--reevaluate", "--tenant", "acme", "--format", "json")
    assert "queued re-evaluation" in result.stderr and "1 adapter(s) on tiny-bert" in result.stderr
    assert json.loads(result.stdout)  # the report itself still follows
    with session_scope() as s:
        (reeval,) = [j for j in list_jobs(s) if j.kind == "reevaluate"]
        assert [a["id"] for a in reeval.spec["adapters"]] == [adapter_id]
    assert {"task": "lorafleet.run_job", "args": [reeval.id], "kwargs": {}} in queued_messages(home)


def test_adapter_export_copies_a_verified_folder_whole_or_not_at_all(home: Path, tmp_path: Path):
    from lora_engine.adapters.digest import adapter_files_digest

    adapter_id = "00000000-0000-4000-8000-000000000002"
    path, sha, size = succeeded_adapter(adapter_id)
    (tmp_path / "empty").mkdir()
    for dest in (tmp_path / "out" / "new", tmp_path / "empty"):  # a new folder, or an empty one
        run("adapter", "export", adapter_id, str(dest))
        assert adapter_files_digest(dest) == (sha, size)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["new"]  # no temp folder left
    full = tmp_path / "full"
    full.mkdir()
    (full / "mine.txt").write_text("keep")
    refused = run("adapter", "export", adapter_id, str(full), ok=False)
    assert refused.exit_code == 1 and "not empty" in refused.stderr
    assert [p.name for p in full.iterdir()] == ["mine.txt"]
    (path / "adapter_model.safetensors").write_bytes(b"\1" * 64)  # changed since it was registered
    changed = run("adapter", "export", adapter_id, str(tmp_path / "out" / "changed"), ok=False)
    assert changed.exit_code == 1 and "changed since it was registered" in changed.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["new"]


@pytest.mark.parametrize("command, setting", [(("api", "serve"), "LORAFLEET_API_METRICS_PORT"),
                                               (("serve",), "LORAFLEET_SERVE_METRICS_PORT")])
def test_a_taken_metrics_port_is_refused_before_serving(home: Path, monkeypatch: pytest.MonkeyPatch,
                                                         command, setting):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setenv(setting, str(port))
        get_settings.cache_clear()
        result = run(*command, "--port", "1", ok=False)
    assert result.exit_code == 1
    assert f"cannot serve metrics on 127.0.0.1:{port}" in result.output + result.stderr
    assert setting in result.output + result.stderr and "Traceback" not in result.output


def test_adapter_merge_queues_a_job_the_worker_runs_and_lists_the_parents(home: Path, tmp_path: Path):
    import torch

    from lora_engine.adapters.io import save_adapter
    from lora_engine.inject import LoraSettings, head_module_names, inject_lora, mark_only_lora_as_trainable
    from lora_engine.models import load_base_model
    from worker.runner import run_job

    run("tenant", "create", "acme")
    run("tenant", "create", "globex")
    ids = {}
    for name, tenant in (("a", "acme"), ("b", "acme"), ("g", "globex")):
        torch.manual_seed(len(ids))
        model, _ = load_base_model("tiny-bert", "classification", 2)
        settings = LoraSettings(rank=4, alpha=8)
        inject_lora(model, settings)
        mark_only_lora_as_trainable(model, modules_to_save=head_module_names(model))
        save_adapter(model, tmp_path / name, base_model_name="tiny-bert", settings=settings,
                     task_type="classification")
        out = run("adapter", "import", "--tenant", tenant, "--task", "sst2", "--json", str(tmp_path / name))
        ids[name] = json.loads(out.stdout)["id"]
    refused = run("adapter", "merge", "--tenant", "acme", ids["a"], ids["g"], "--how", "ties", ok=False)
    assert refused.exit_code != 0 and "no adapter" in refused.stderr  # globex's: unknown to acme
    bad_weights = run("adapter", "merge", "--tenant", "acme", ids["a"], ids["b"], "--how", "linear",
                      "--weights", "1,x", ok=False)
    assert bad_weights.exit_code == 2
    with session_scope() as s:
        assert list_jobs(s) == []

    job = json.loads(run("adapter", "merge", "--tenant", "acme", ids["a"], ids["b"], "--how", "ties",
                         "--weights", "0.7,0.3", "--json").stdout)
    assert (job["kind"], job["state"], job["spec"]["density"]) == ("merge", "queued", 0.5)
    assert {"task": "lorafleet.run_job", "args": [job["id"]], "kwargs": {}} in queued_messages(home)
    assert run_job(job["id"], worker_id="w1", settings=get_settings(), cache=None).outcome == "succeeded"

    shown = json.loads(run("job", "show", job["id"], "--json").stdout)
    merged = shown["adapter"]
    assert merged["parents"] == [ids["a"], ids["b"]] and shown["metrics"] == {}
    shown_adapter = json.loads(run("adapter", "show", merged["id"], "--json").stdout)
    assert shown_adapter["parents"] == [ids["a"], ids["b"]]
    listed = {a["id"]: a["parents"] for a in json.loads(run("adapter", "list", "--json").stdout)}
    assert listed == {ids["a"]: [], ids["b"]: [], ids["g"]: [], merged["id"]: [ids["a"], ids["b"]]}
    assert merged["model"] == f"ft:tiny-bert:acme:merge-ties:{merged['id']}"
    assert "merge ties r4" in run("job", "list").stdout
    run("job", "metrics", job["id"])  # no training curves: an empty history, not an error
    assert json.loads(run("report", "cost", "--format", "json").stdout)
