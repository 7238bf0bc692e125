"""Bad input at the door, table-driven: the CLI's options, submit-batch files (YAML and JSONL),
data files, adapter folders and the environment. Each case exits non-zero with a message naming
the problem (and what is allowed), prints no traceback, and leaves the registry and the
artifacts exactly as they were (dumped before and after)."""

from __future__ import annotations

import json
import os
import pickle
import sqlite3
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.cli.main import cli
from orchestrator.config import get_settings
from orchestrator.registry.db import forget_engine

ROOT = Path(__file__).resolve().parents[2]
GOOD = {"tenant": "acme", "task": "sst2", "rank": 4, "base_model": "tiny-bert", "max_steps": 5}
ALIAS_BOMB = "\n".join(
    ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"{c}: &{c} [" + ",".join([f"*{p}"] * 9) + "]" for p, c in zip("abcdefgh", "bcdefghi", strict=True)]
)


def safetensors_bytes(header: dict | bytes, data: bytes) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def adapter_folder(folder: Path, config: dict, weights: bytes | None, name: str = "adapter_model.safetensors"
                   ) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps(config))
    if weights is not None:
        (folder / name).write_bytes(weights)
    return folder


LORA = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "base_model_name_or_path": "tiny-bert"}
TENSOR = {"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
# Malformed or non-finite weights: (folder name, header, tensor bytes).
BAD_WEIGHTS = [
    ("overlap", {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                 "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12),
    ("shape-past-end", {"w": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}}, b"\0" * 4),
    ("deep-header", b"[" * 100_000 + b"]" * 100_000, b""),
    ("nan", {"ok": TENSOR["w"], "lora_B": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}},
     struct.pack("<3f", 0.5, 1.0, float("nan"))),
    ("inf", {"w": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}, b"\x00\x00\x80\x7f"),
]


@pytest.fixture(scope="module")
def door(tmp_path_factory: pytest.TempPathFactory):
    """An embedded home with tenant acme, a data root full of bad files, and its registry path."""
    base = tmp_path_factory.mktemp("door")
    data = base / "data"
    data.mkdir()
    mp = pytest.MonkeyPatch()
    mp.setenv("LORAFLEET_HOME", str(base / "home"))
    mp.setenv("LORAFLEET_DATA_ROOTS", str(data))
    mp.setenv("HF_HUB_OFFLINE", "1")
    for var in ("LORAFLEET_DATABASE_URL", "LORAFLEET_BROKER_URL", "LORAFLEET_ARTIFACTS"):
        mp.delenv(var, raising=False)
    get_settings.cache_clear()
    assert CliRunner().invoke(cli, ["tenant", "create", "acme"]).exit_code == 0
    w = data.joinpath
    w("empty.jsonl").write_bytes(b"")
    w("notjson.jsonl").write_text('{"text": "a", "label": 0}\n{secret text here\n')
    w("nolabel.jsonl").write_text('{"text": "a", "label": 0}\n{"text": "b"}\n')
    w("latin1.jsonl").write_bytes('{"text": "caf\u00e9", "label": 0}\n'.encode("latin-1"))
    w("mixed.jsonl").write_text('{"text": "a", "label": 0}\n{"text": "b", "label": "1"}\n')
    w("onelabel.jsonl").write_text('{"text": "a", "label": 0}\n{"text": "b", "label": 0}\n')
    w("sparse.jsonl").write_text("".join(json.dumps({"text": f"t{i}", "label": int(i == 0)}) + "\n"
                                         for i in range(5)))
    w("extra.jsonl").write_text('{"text": "a", "label": 0, "secret": "x"}\n')
    good_rows = [{"text": f"t{i}", "label": i % 2} for i in range(8)]
    w("good.jsonl").write_text("".join(json.dumps(r) + "\n" for r in good_rows))
    (base / "outside.jsonl").write_text(w("good.jsonl").read_text())
    w("link.jsonl").symlink_to(base / "outside.jsonl")
    w("bomb.yaml").write_text(ALIAS_BOMB)
    w("syntax.yaml").write_text("- tenant: acme\n  task: [unclosed\n")
    w("badline.jsonl").write_text(json.dumps(GOOD) + "\n{not json\n")
    w("nan.jsonl").write_text(json.dumps(GOOD) + '\n{"tenant": "acme", "task": "sst2", "lr": NaN}\n')
    w("wrongtype.jsonl").write_text(json.dumps(GOOD) + "\n" + json.dumps({**GOOD, "rank": "abc"}) + "\n")
    w("unknown.yaml").write_text(json.dumps([GOOD, GOOD, {**GOOD, "colour": "blue"}]))
    w("notmapping.yaml").write_text("- just a string\n")
    w("notenant.jsonl").write_text(json.dumps({"task": "sst2"}) + "\n")
    w("notlist.yaml").write_text("tenant: acme\n")
    w("batch.toml").write_text("x = 1\n")
    w("empty-batch.jsonl").write_text("\n")
    w("grad.yaml").write_text(json.dumps([{**GOOD, "grad_accum": 1_000_000_000}]))
    w("rank-true.yaml").write_text("- {tenant: acme, task: sst2, base_model: tiny-bert, rank: true}\n")
    w("deep.json").write_text("[" * 100_000 + "]" * 100_000)
    w("deep-flow.yaml").write_text("[" * 100_000 + "]" * 100_000)
    w("deep-block.yaml").write_text("".join(" " * i + "- x:\n" for i in range(0, 400, 2)))
    w("dup.jsonl").write_text('{"tenant": "acme", "task": "sst2", "tenant": "other"}\n')
    w("dup.yaml").write_text("- tenant: acme\n  task: sst2\n  tenant: other\n")
    w("bigint.json").write_text('[{"tenant": "acme", "task": "sst2", "rank": ' + "9" * 5000 + "}]")
    w("bad-items.jsonl").write_text('{"task": "sst2"}\n' * 120)
    w("many-fields.yaml").write_text(json.dumps([{**GOOD, **{f"x{i}": 1 for i in range(60)}}]))
    w("dupkey.jsonl").write_text('{"text": "a", "label": 0, "label": 1}\n{"text": "b", "label": 1}\n')
    w("deep-row.jsonl").write_text('{"text": ' + "[" * 5000 + "]" * 5000 + ', "label": 0}\n')
    adapter_folder(data / "wrong-base", {**LORA, "base_model_name_or_path": "tiny-gpt2"},
                   safetensors_bytes(TENSOR, b"\0" * 4))
    adapter_folder(data / "corrupt", LORA, safetensors_bytes(TENSOR, b"\0" * 2))
    adapter_folder(data / "pickled", LORA, pickle.dumps({"lora_A": [0.0] * 64}))
    adapter_folder(data / "ia3", {**LORA, "peft_type": "IA3"}, safetensors_bytes(TENSOR, b"\0" * 4))
    adapter_folder(data / "binonly", LORA, pickle.dumps({"w": 1}), name="adapter_model.bin")
    for name, header, tensors in BAD_WEIGHTS:
        adapter_folder(data / name, LORA, safetensors_bytes(header, tensors))
    adapter_folder(data / "rank-true", {**LORA, "r": True}, safetensors_bytes(TENSOR, b"\0" * 4))
    adapter_folder(data / "rank-huge", {**LORA, "r": 10**30}, safetensors_bytes(TENSOR, b"\0" * 4))
    labels = adapter_folder(data / "labels-huge", {**LORA, "target_modules": ["query"]},
                            safetensors_bytes(TENSOR, b"\0" * 4))
    (labels / "lorafleet.json").write_text(json.dumps({"base_model": "tiny-bert", "kind": "classification",
                                                       "task": "sst2", "num_labels": 10**30}))
    settings = get_settings()
    artifacts = settings.artifacts
    theirs = adapter_folder(artifacts / "other-tenant" / "their-adapter", LORA,
                            safetensors_bytes(TENSOR, b"\0" * 4))
    (theirs / "config.json").write_text('{"model_type": "bert"}')
    yield {"data": data, "registry": base / "home" / "registry.db", "artifacts": artifacts, "theirs": theirs,
           "base": base}
    forget_engine(settings.database_url)
    mp.undo()
    get_settings.cache_clear()


def dump(door: dict) -> tuple:
    """Every row of every registry table, and every file under the artifacts root."""
    with sqlite3.connect(door["registry"]) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        rows = {t: sorted(map(repr, conn.execute(f'SELECT * FROM "{t}"'))) for t in sorted(tables)}
    files = sorted(str(p) for p in door["artifacts"].rglob("*"))
    return rows, files


S = ["job", "submit", "--tenant", "acme", "--task", "sst2", "--base-model", "tiny-bert"]
IMP = ["adapter", "import", "--tenant", "acme", "--task", "sst2"]
NAME_RULE = "a display name is one line of at most 200 printable characters"
C = ["job", "submit", "--tenant", "acme", "--task", "custom-classification", "--base-model", "tiny-bert",
     "--dataset"]
U = ["dataset", "upload", "--tenant", "acme"]
B = ["job", "submit-batch"]

# (case, argv with {data}/{theirs}/{base} placeholders, what the message must say)
CASES = [
    # -- CLI options: every number finite and bounded, names resolved, one problem each
    ("lr-nan", [*S, "--lr", "nan"], "lr: must be a finite number > 0 and <= 1"),
    ("lr-inf", [*S, "--lr", "inf"], "lr: must be a finite number"),
    ("alpha-nan", [*S, "--alpha", "nan"], "alpha: must be a finite number"),
    ("epochs-nan", [*S, "--epochs", "nan"], "epochs: must be a finite number > 0 and <= 1000"),
    ("grad-accum-huge", [*S, "--set", "grad_accum=1000000000"], "grad_accum: must be between 1 and 1024"),
    ("max-steps-overflow", [*S, "--max-steps", "3000000000"], "max_steps: must be between 1 and 10000000"),
    ("seed-negative", [*S, "--seed", "-1"], "seed: must be between 0 and"),
    ("batch-size-zero", [*S, "--batch-size", "0"], "batch_size: must be between 1 and 4096"),
    ("dropout-one", [*S, "--dropout", "1.5"], "dropout: must be in [0, 1)"),
    ("rank-zero", [*S, "--rank", "0"], "rank: must be between 1 and 1024"),
    ("unknown-task", ["job", "submit", "--tenant", "acme", "--task", "sst3"], "allowed: cola, sst2"),
    ("unknown-method", [*S, "--method", "qlora"], "'qlora' is not one of"),
    ("unknown-base-model", ["job", "submit", "--tenant", "acme", "--task", "sst2", "--base-model",
                            "no-such-model-xyz"], "use an alias (minilm-l6"),
    ("set-unknown-field", [*S, "--set", "colour=blue"], "colour: unknown field; allowed fields"),
    ("set-not-key-value", [*S, "--set", "colour"], "is not key=value"),
    ("rank-not-a-number", [*S, "--rank", "four"], "'four' is not a valid integer"),
    ("unknown-tenant", ["job", "submit", "--tenant", "nobody", "--task", "sst2"], "no tenant 'nobody'"),
    ("priority-out-of-range", [*S, "--priority", "5000"], "between -1000 and 1000"),
    ("steps-and-epochs", [*S, "--max-steps", "5", "--epochs", "1"], "not both"),
    ("custom-without-data", ["job", "submit", "--tenant", "acme", "--task", "custom-classification"],
     "needs a JSONL data set"),
    ("unknown-init-from-id", [*S, "--init-from", "0b7c9a4e-0000-4000-8000-000000000000"], "no adapter"),
    # -- paths: confined to the data roots, never into the artifacts root
    ("data-etc-passwd", [*C, "/etc/passwd"], "outside the allowed data roots"),
    ("data-dotdot", [*C, "{data}/sub/../../outside.jsonl"], "contains '..'"),
    ("data-symlink-out", [*C, "{data}/link.jsonl"], "a symlink to a place outside"),
    ("data-missing", [*C, "{data}/missing.jsonl"], "no such file"),
    ("base-into-artifacts", [*S[:-2], "--base-model", "{theirs}"], "points into the artifacts root"),
    ("init-from-into-artifacts", [*S, "--init-from", "{theirs}"], "points into the artifacts root"),
    # -- data files: whole-file validation, line numbers and reasons, never the content
    ("data-empty", [*U, "{data}/empty.jsonl"], "file: empty: no rows"),
    ("data-not-json", [*U, "{data}/notjson.jsonl"], "line 2: not valid JSON"),
    ("data-no-label", [*C, "{data}/nolabel.jsonl"], "line 2: missing field 'label'"),
    ("data-not-utf8", [*U, "{data}/latin1.jsonl"], "line 1: not valid UTF-8"),
    ("data-mixed-labels", [*U, "{data}/mixed.jsonl"], "line 2: label is a str"),
    ("data-one-label", [*U, "{data}/onelabel.jsonl"], "only one distinct label"),
    ("data-sparse-label", [*U, "{data}/sparse.jsonl"], "line 1: the label on this line has 1 row(s)"),
    ("data-unknown-field", [*U, "{data}/extra.jsonl"], "unknown field(s) 'secret'; allowed: text"),
    ("data-kind-wrong", [*U, "--kind", "generation", "{data}/good.jsonl"], "line 1: missing field 'prompt'"),
    ("data-kind-unknown", [*U, "--kind", "images", "{data}/good.jsonl"], "'images' is not one of"),
    # -- submit-batch files
    ("batch-alias-bomb", [*B, "{data}/bomb.yaml"], "YAML aliases (*name) are not allowed"),
    ("batch-yaml-syntax", [*B, "{data}/syntax.yaml"], "line 3 column 1"),
    ("batch-jsonl-bad-line", [*B, "{data}/badline.jsonl"], "line 2 is not JSON"),
    ("batch-jsonl-nan", [*B, "{data}/nan.jsonl"], "line 2: NaN is not a number JSON allows"),
    ("batch-wrong-type", [*B, "{data}/wrongtype.jsonl"],
     "item 1: rank: must be between 1 and 1024, a whole number"),
    ("batch-unknown-key", [*B, "{data}/unknown.yaml"], "item 2: colour: unknown field"),
    ("batch-not-mapping", [*B, "{data}/notmapping.yaml"], "item 0: must be a mapping"),
    ("batch-no-tenant", [*B, "{data}/notenant.jsonl"], "item 0: missing 'tenant'"),
    ("batch-not-list", [*B, "{data}/notlist.yaml"], "expected a list of job items, got dict"),
    ("batch-unknown-suffix", [*B, "{data}/batch.toml"], "allowed: .jsonl, .json, .yaml"),
    ("batch-empty", [*B, "{data}/empty-batch.jsonl"], "empty batch"),
    ("batch-grad-accum", [*B, "{data}/grad.yaml"], "item 0: grad_accum: must be between 1 and 1024"),
    # -- adapter folders to start from
    ("adapter-wrong-base", [*S, "--init-from", "{data}/wrong-base"], "trained on base model 'tiny-gpt2'"),
    ("adapter-corrupt", [*S, "--init-from", "{data}/corrupt"], "is truncated or corrupt"),
    ("adapter-pickle-disguised", [*S, "--init-from", "{data}/pickled"], "is not a safetensors file"),
    ("adapter-unknown-peft-type", [*S, "--init-from", "{data}/ia3"], "peft_type 'IA3' is not supported"),
    ("adapter-bin-only", [*S, "--init-from", "{data}/binonly"], "adapter_model.bin (pickle) is refused"),
    # -- numbers: bounded below what their registry column (or the spec) holds; booleans are not numbers
    ("quota-queued-huge", ["tenant", "set-quota", "acme", "--max-queued", str(10**30)],
     "max_queued must be a whole number between 0 and 2147483647 (got 1000000000000000000000000000000)"),
    ("quota-running-huge", ["tenant", "set-quota", "acme", "--max-running", str(2**31)],
     "max_running must be a whole number between 0 and 2147483647"),
    ("quota-storage-huge", ["tenant", "set-quota", "acme", "--max-storage-bytes", str(2**63)],
     "max_storage_bytes must be a whole number between 0 and 9223372036854775807, or unlimited"),
    ("create-running-huge", ["tenant", "create", "bob", "--max-running", str(10**30)],
     "max_running must be a whole number between 0 and 2147483647"),
    ("rank-400-digits", [*S, "--rank", "9" * 400],
     "rank: must be between 1 and 1024 (got an integer of 400 digits)"),
    ("rank-true", [*S, "--set", "rank=true"], "rank: must be between 1 and 1024, a whole number (got True)"),
    ("lr-true", [*S, "--set", "lr=true"], "lr: must be a finite number > 0 and <= 1, or 'auto' (got True)"),
    ("max-steps-float", [*S, "--set", "max_steps=5.5"], "max_steps: must be between 1 and 10000000, a whole"),
    ("set-1e400", [*S, "--set", "alpha=1e400"], "--set alpha: number 1e400 is out of range"),
    ("set-duplicate-key", [*S, "--set", 'targets={{"a": 1, "a": 2}}'],
     "--set targets: key 'a' appears twice"),
    ("batch-rank-true", [*B, "{data}/rank-true.yaml"],
     "item 0: rank: must be between 1 and 1024, a whole number"),
    ("job-list-offset-huge", ["job", "list", "--offset", str(10**30)], "is not in the range 0<=x<="),
    ("reconcile-grace-nan", ["reconcile", "--lease-grace", "nan"], "'nan' is not a number of seconds"),
    # -- documents: nesting, duplicate keys, huge numbers; every list of problems bounded
    ("batch-json-deep", [*B, "{data}/deep.json"], "nests deeper than 32 levels of objects and lists"),
    ("batch-yaml-deep-flow", [*B, "{data}/deep-flow.yaml"],
     "nests deeper than 32 levels of mappings and lists"),
    ("batch-yaml-deep-block", [*B, "{data}/deep-block.yaml"], "line 17: nests deeper than 32 levels"),
    ("batch-jsonl-duplicate-key", [*B, "{data}/dup.jsonl"],
     "line 1: key 'tenant' appears twice in one object"),
    ("batch-yaml-duplicate-key", [*B, "{data}/dup.yaml"],
     "line 3: key 'tenant' appears twice in one mapping"),
    ("batch-huge-number", [*B, "{data}/bigint.json"], "a number of 5000 digits; numbers have at most 100"),
    ("batch-bad-items-counted", [*B, "{data}/bad-items.jsonl"],
     "120 invalid item(s):\n  item 0: missing 'tenant' (the tenant's slug)\n"),
    ("batch-bad-items-bounded", [*B, "{data}/bad-items.jsonl"],
     "  item 49: missing 'tenant' (the tenant's slug)\n  ... and 70 more\n"),
    ("spec-problems-bounded", [*B, "{data}/many-fields.yaml"], "item 0: x49: unknown field; allowed fields: "
                                                               "task, method, rank,"),
    ("spec-problems-counted", [*B, "{data}/many-fields.yaml"], "quantize\n  ... and 10 more\n"),
    ("data-duplicate-key", [*U, "{data}/dupkey.jsonl"],
     "line 1: not valid JSON: key 'label' appears twice"),
    ("data-deep-row", [*U, "{data}/deep-row.jsonl"],
     "line 1: not valid JSON: nests deeper than 32 levels"),
    # -- adapters from outside: malformed safetensors and non-finite weights, at both doors
    *[(f"init-from-{name}", [*S, "--init-from", f"{{data}}/{name}"], says) for name, says in [
        ("overlap", "tensor 'b' overlaps the bytes of another tensor"),
        ("shape-past-end", "tensor 'w' lies outside the file"),
        ("deep-header", "its header nests deeper than 3 levels"),
        ("nan", "holds NaN or infinite values in tensor 'lora_B'"),
        ("inf", "holds NaN or infinite values in tensor 'w'"),
        ("rank-true", "r must be a whole number between 1 and 1024 (got True)"),
        ("rank-huge", "r must be a whole number between 1 and 1024 (got 10000000000000000"),
    ]],
    *[(f"import-{name}", [*IMP, f"{{data}}/{name}"], f"adapter import: adapter_model.safetensors {says}")
      for name, says in [
        ("overlap", "is corrupt (tensor 'b' overlaps"),
        ("shape-past-end", "is truncated or corrupt (tensor 'w' lies outside the file)"),
        ("deep-header", "is not a safetensors file (its header nests deeper than 3 levels"),
        ("nan", "holds NaN or infinite values in tensor 'lora_B'; every weight of an adapter must be finite"),
        ("inf", "holds NaN or infinite values in tensor 'w'"),
    ]],
    ("import-rank-true", [*IMP, "{data}/rank-true"], "adapter_config.json: r must be a whole number"),
    ("import-labels-huge", [*IMP[:4], "{data}/labels-huge"],
     "lorafleet.json: a field has the wrong type (num_labels must be a whole number between 1 and 100000"),
    # -- display names: one line, printable, at most 200 characters
    ("name-5000", ["tenant", "create", "bob", "--name", "x" * 5000],
     f"display name is 5000 characters long; {NAME_RULE}"),
    ("name-two-lines", ["tenant", "create", "bob", "--name", "Bob\nCorp"],
     "holds a line break at character 4"),
    ("name-escape", ["tenant", "create", "bob", "--name", "\x1b]0;owned\x07"],
     f"holds the non-printable character U+001B at character 1; {NAME_RULE}"),
    ("name-bidi", ["tenant", "create", "bob", "--name", "abc\u202egpj.exe"],
     "non-printable character U+202E"),
    ("rename-two-lines", ["tenant", "rename", "acme", "a\rb"], "holds a line break at character 2"),
    ("rename-5000", ["tenant", "rename", "acme", "y" * 5000], "display name is 5000 characters long"),
]


@pytest.mark.parametrize(("case", "argv", "needle"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_cleanly(door: dict, case: str, argv: list[str], needle: str) -> None:
    argv = [a.format(**{k: door[k] for k in ("data", "theirs", "base")}) for a in argv]
    before = dump(door)
    result = CliRunner().invoke(cli, argv)
    output = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert result.exit_code != 0, output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), output
    assert "Traceback" not in output
    assert needle in output, output
    assert "secret" not in output.replace("'secret'", "")  # never the file's content
    assert dump(door) == before


ENV_CASES = [
    ("LORAFLEET_LEASE_SECONDS", "abc", "LORAFLEET_LEASE_SECONDS='abc' is not valid"),
    ("LORAFLEET_MAX_ATTEMPTS", "3.5", "LORAFLEET_MAX_ATTEMPTS='3.5' is not valid"),
    ("LORAFLEET_PRICES", "cpu:0.1", "is not a device=price pair"),
    ("LORAFLEET_PRICES", "cpu=cheap", "LORAFLEET_PRICES='cpu=cheap' is not valid"),
    ("LORAFLEET_DATABASE_URL", "mysql://x/y", "unknown scheme 'mysql'"),
    ("LORAFLEET_BROKER_URL", "ftp://x", "unknown scheme 'ftp'"),
    ("LORAFLEET_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/x", "cannot reach the registry"),
    ("LORAFLEET_TENANT_DEVICE_HOURS_PER_MONTH", "nan", "should be a finite number"),
]


@pytest.mark.parametrize(("var", "value", "needle"), ENV_CASES, ids=[f"{c[0]}={c[1]}" for c in ENV_CASES])
def test_bad_environment_is_one_clear_line(door: dict, var: str, value: str, needle: str) -> None:
    before = dump(door)
    env = {**os.environ, var: value, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "orchestrator.cli.main", "tenant", "list"], env=env,
                          capture_output=True, text=True, timeout=60, cwd=door["base"])
    assert done.returncode != 0 and needle in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) <= 2
    assert dump(door) == before


def test_a_million_item_batch_is_refused_in_a_few_lines(door: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """Over the item cap: refused before any item is parsed, naming the count. Under a raised cap,
    100,000 bad items: the error shows the first 50 and counts the rest."""
    before = dump(door)
    million = door["data"] / "million.jsonl"
    million.write_text("{}\n" * 1_000_000)
    result = CliRunner().invoke(cli, [*B, str(million)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "1000000 items; a batch file may hold at most 1000 (LORAFLEET_MAX_BATCH_ITEMS)" in result.output
    assert len(result.output) < 20_000

    monkeypatch.setenv("LORAFLEET_MAX_BATCH_ITEMS", "100000")
    get_settings.cache_clear()
    try:
        many = door["data"] / "many.jsonl"
        many.write_text("{}\n" * 100_000)
        result = CliRunner().invoke(cli, [*B, str(many)])
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "100000 invalid item(s)" in result.output and "\n  ... and 99950 more\n" in result.output
    assert len(result.output) < 20_000
    assert dump(door) == before
