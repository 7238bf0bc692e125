"""`lorafleet adapter …`: list, show, export, delete, merge, and predict with trained adapters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from lora_engine.adapter_merging import HOWS as MERGE_HOWS
from orchestrator.cli.helpers import (
    CliError,
    Column,
    emit,
    json_option,
    open_session,
    print_record,
    print_table,
    status,
    wide_option,
)
from orchestrator.cli.output import echo, short_id
from orchestrator.text import printable

ADAPTER_COLUMNS = (
    Column("id"),
    Column("task"),
    Column("method"),
    Column("rank", justify="right"),
    Column("stored_rank", "stored r", justify="right", wide_only=True),  # PiSSA/OLoRA: 2 x rank
    Column("base_model", "base model", flexible=True),
    Column("bytes", "size", justify="right"),
    Column("trainable_params", "trained", justify="right"),
    Column("created_at", "age", justify="right"),
    Column("job_id", "job", wide_only=True),
    Column("parent_adapter_id", "parent", wide_only=True),
    Column("parents", "merged from", lambda v, wide: ",".join(short_id(p, wide) for p in v) or "-",
           wide_only=True),
)


def _adapter(adapter_id: str, *, verified: bool = False) -> dict[str, Any]:
    """The adapter's view; `verified`: only if its files still match the registry's sha256."""
    from lora_engine.errors import AdapterError
    from orchestrator.services.adapters import get_adapter, model_names_of, parents_of, verified_adapter
    from orchestrator.services.views import adapter_dict

    with open_session() as session:
        try:
            row = verified_adapter(session, adapter_id) if verified else get_adapter(session, adapter_id)
        except AdapterError as exc:
            raise CliError(f"adapter {adapter_id}: {exc}") from None
        return adapter_dict(row, model_names_of(session, [row])[row.id], parents_of(session, [row])[row.id])


@click.group()
def adapter() -> None:
    """Trained adapters (PEFT format folders under the artifacts root)."""


@adapter.command("list")
@click.option("--tenant", help="Only this tenant's adapters.")
@click.option("--task", help="Only adapters for this task.")
@click.option("--base-model", help="Only adapters of this base model.")
@wide_option
@json_option
def list_(tenant: str | None, task: str | None, base_model: str | None, wide: bool, as_json: bool) -> None:
    """List live adapters, oldest first."""
    from orchestrator.services.adapters import list_adapters, model_names_of, parents_of
    from orchestrator.services.views import adapter_dict

    with open_session() as session:
        rows = list_adapters(session, tenant=tenant, task=task, base_model=base_model)
        names, parents = model_names_of(session, rows), parents_of(session, rows)
        views = [adapter_dict(a, names[a.id], parents[a.id]) for a in rows]
    emit(views, as_json, lambda v: print_table(v, ADAPTER_COLUMNS, wide=wide))


@adapter.command("show")
@click.argument("adapter_id")
@json_option
def show(adapter_id: str, as_json: bool) -> None:
    """Show one adapter: files, checksum, size, lineage."""
    emit(_adapter(adapter_id), as_json, print_record)


@adapter.command("export")
@click.argument("adapter_id")
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@click.option("--merged", is_flag=True,
              help="Merge into base: write a plain transformers folder (the LoRA merged into the base "
                   "weights, the head beside them, safetensors) instead of the adapter's files.")
@json_option
def export(adapter_id: str, dest: Path, merged: bool, as_json: bool) -> None:
    """Copy the adapter's folder to DEST (new or empty), after checking its sha256.

    The copy loads with `peft.PeftModel.from_pretrained(base, DEST)`. With --merged, DEST is a
    transformers model folder: `AutoModelForSequenceClassification.from_pretrained(DEST,
    trust_remote_code=True)` (a generation adapter: `AutoModelForCausalLM.from_pretrained(DEST)`)
    gives lorafleet's outputs; a mean-pooled classifier's pooling ships in DEST as a small module.
    When a stock loader would not reproduce the adapter (a mean-pooled head fed [CLS]), stderr
    says so and which loader does. DEST is never a device, a dangling link, or a place inside the
    lorafleet home or the artifacts root.
    """
    from lora_engine.errors import AdapterError
    from orchestrator.services.adapters import export_adapter

    merge = None
    if merged:
        from lora_engine.adapters.merged_export import write_merged_folder as merge
    with open_session() as session:
        try:
            done = export_adapter(session, adapter_id, dest, merge=merge)
        except AdapterError as exc:
            raise CliError(f"adapter {adapter_id}: {exc}") from None
        except OSError as exc:  # a full disk, no permission
            raise CliError(f"adapter export: cannot write {dest}: {exc.strerror or exc}; "
                           "nothing was written") from None
        view = {"id": done.adapter.id, "path": str(done.path), "sha256": done.adapter.sha256,
                "merged": done.merged, "notice": done.notice}
    if done.notice:
        status(f"note: {done.notice}")
    emit(view, as_json, lambda v: echo(v["path"]))


@adapter.command("delete")
@click.argument("adapter_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
def delete(adapter_id: str, yes: bool, as_json: bool) -> None:
    """Delete the adapter's files (the registry keeps its history)."""
    from orchestrator.services.adapters import delete_adapter

    if not yes and not as_json:
        click.confirm(f"delete adapter {adapter_id} and its files?", abort=True, err=True)
    with open_session() as session:
        row = delete_adapter(session, adapter_id)
        view = {"id": row.id, "deleted_at": row.deleted_at}
    emit(view, as_json, print_record)


def _weights(value: str | None) -> list[float] | None:
    if value is None:
        return None
    try:
        return [float(w) for w in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"{value!r}: give numbers separated by commas, e.g. 0.7,0.3",
                                 param_hint="--weights") from None


@adapter.command("merge")
@click.option("--tenant", required=True, help="Tenant slug (the adapters must all be this tenant's).")
@click.argument("adapter_ids", nargs=-1, required=True)
@click.option("--how", required=True, type=click.Choice(MERGE_HOWS),
              help="PEFT's add_weighted_adapter method (cat: the ranks add up).")
@click.option("--weights", help="One weight per adapter, comma-separated (default: equal, summing to 1).")
@click.option("--density", type=float, help="ties / dare_*: the share of entries kept (default 0.5).")
@click.option("--seed", type=int, help="dare_*: the seed of the random drops (default 0; recorded).")
@click.option("--suffix", help="The new adapter's model-name suffix (default merge-<how>).")
@click.option("--priority", type=int, default=0, show_default=True, help="Higher runs first (-1000..1000).")
@click.option("--wait", is_flag=True, help="Wait for the merge to end.")
@json_option
def merge(tenant: str, adapter_ids: tuple[str, ...], how: str, weights: str | None, density: float | None,
          seed: int | None, suffix: str | None, priority: int, wait: bool, as_json: bool) -> None:
    """Queue a job that merges ADAPTER_IDS (2 or more, one base, task and rank) into a new adapter.

    Not LoRA merged into the base (that is `adapter export --merged`): a new adapter of the same
    base whose LoRA matrices are PEFT's add_weighted_adapter of the parents'; a classifier's
    head is their weighted average. `adapter show` lists the new adapter's parents.

    Example:
      lorafleet adapter merge --tenant acme 3f2a 9b1c --how ties --weights 0.6,0.4
    """
    from orchestrator.services.adapter_merging import submit_merge
    from orchestrator.services.views import job_dict

    with open_session() as session:
        job = submit_merge(session, tenant, list(adapter_ids), how, _weights(weights), density, seed=seed,
                           suffix=suffix, priority=priority)
        view = job_dict(job, tenant)
    if not wait:
        emit(view, as_json, lambda v: echo(v["id"]))
        return
    from orchestrator.cli.live import follow

    if not as_json:
        echo(f"job {view['id']} {view['state']}  (Ctrl-C detaches; the job keeps running)")
    detail = follow(view["id"], show_events=False, as_json=as_json)
    emit(detail, as_json, lambda d: echo(f"adapter {(d.get('adapter') or {}).get('id')}"))
    if detail["state"] != "succeeded":
        raise CliError(f"job {view['id']} ended {detail['state']}: {detail.get('error') or ''}".rstrip(": "))


@adapter.command("predict")
@click.argument("adapter_id")
@click.argument("texts", nargs=-1, required=True)
@click.option("--merged", is_flag=True, help="Merge LoRA into the base weights first (faster inference).")
@json_option
def predict(adapter_id: str, texts: tuple[str, ...], merged: bool, as_json: bool) -> None:
    """Classify TEXTS (or generate from them, for generation adapters) in this process.

    For sentence-pair tasks give each pair as one argument, the two sentences separated by ' ||| '.
    """
    view = _adapter(adapter_id, verified=True)
    from lora_engine.predict import load_for_inference  # torch + transformers: only here

    predictor = load_for_inference(view["path"], merged=merged)
    if predictor.kind == "generation":
        outputs = [
            {"input": t, "output": o} for t, o in zip(texts, predictor.generate(list(texts)), strict=True)
        ]
        emit(outputs, as_json, _print_generations)
        return
    pairs = [tuple(t.split(" ||| ", 1)) if " ||| " in t else t for t in texts]
    predictions = predictor.classify(pairs)
    outputs = [{"input": t, **p.as_dict()} for t, p in zip(texts, predictions, strict=True)]
    emit(outputs, as_json, lambda _v: _print_predictions(texts, predictions))


def _print_generations(outputs: list[dict[str, str]]) -> None:
    # Generated text is the adapter's (a tenant's model): escaped like every other string.
    for o in outputs:
        echo(o["input"])
        echo(f"  → {o['output']}")


def _print_predictions(texts: tuple[str, ...], predictions: list[Any]) -> None:
    """`LABEL (score)<TAB>input` a line: the label names are the tenant's data."""
    for text, prediction in zip(texts, predictions, strict=True):
        click.echo(f"{printable(prediction)}\t{printable(text)}")


@adapter.command("import")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--tenant", required=True, help="Tenant slug that will own the adapter.")
@click.option("--task", help="The task it was trained for (sst2, e2e, ...; default: the task its "
                              "lorafleet.json records, for an adapter exported from another lorafleet).")
@click.option("--base-model", help="Its base model: an alias, a folder ('./name'), a hub id, or the id of "
                                   "one of the tenant's full fine-tunes (default: the adapter's own "
                                   "base_model_name_or_path).")
@json_option
def import_(folder: Path, tenant: str, task: str | None, base_model: str | None, as_json: bool) -> None:
    """Register a PEFT LoRA adapter made elsewhere (checked first: LoRA, safetensors, base, shapes).

    The files are copied under the artifacts root; the adapter then works with `predict`,
    `export`, `--init-from` and the reports like one trained here. FOLDER lies in a data root
    (LORAFLEET_DATA_ROOTS) and holds regular files and folders only: a symlink anywhere in it
    refuses the whole folder (copy the files in instead).

    \b
    Example:
      lorafleet adapter import --tenant acme --task sst2 ./my-peft-adapter
    """
    from orchestrator.services.imports import check_import, import_adapter
    from orchestrator.services.model_names import model_name
    from orchestrator.services.views import adapter_dict

    with open_session() as session:
        foreign, base = check_import(session, tenant, folder, task=task, base_model=base_model)
        row = import_adapter(session, tenant, foreign, base)
        view = adapter_dict(row, model_name(row, tenant))  # no job: no suffix, its task names it
    emit(view, as_json, lambda v: echo(f"imported adapter {v['id']} ({v['method']} r={v['rank']} on "
                                             f"{v['base_model']}, {v['bytes']} bytes)"))
