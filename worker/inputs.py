"""What the worker reads for a job: stored objects by id, a base-model folder confined again.

At the claim the job's reference columns are captured (`JobInputs.of(job)`); `resolve_inputs` turns
them into the spec an executor runs. The spec's own strings for these are never opened: the
registry's columns say what they are, and nothing guesses whether a string is an id or a path.

| the job's column / stored name  | what the executor gets                                         |
|---------------------------------|----------------------------------------------------------------|
| dataset_id                      | the stored data.jsonl, sha256 checked (dataset_for_training);  |
|                                 |   a chat data set rendered with the base's chat template first |
| validation_dataset_id           | with dataset_id: both stored files copied into the attempt's   |
|                                 |   inputs folder as data.jsonl + data.validation.jsonl (then    |
|                                 |   rendered if chat): the validation file replaces the held-out |
|                                 |   split evaluation scores                                      |
| init_from_adapter_id            | the adapter's folder, sha256 checked (verified_adapter)        |
| base_adapter_id                 | the full fine-tune's folder, sha256 checked                    |
| base_model spelled as a folder  | the folder, confined and walked again by `orchestrator.paths` |
|                                 |   with this worker's own roots and caps                        |
| reevaluate: each listed adapter | its folder by id, sha256 checked (one that fails is skipped)   |
| merge: each parent              | its folder by id, sha256 checked, the job's tenant's (one that |
|                                 |   fails fails the job: a merge without a parent is another one) |

A folder swapped for symlinks (into another tenant's artifacts, onto /etc) since the submission is
refused here, before anything in it is opened: the job's own input, so it fails with the reason
(`PathRefused`, an InvalidInput). A changed stored object fails the job the same way.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_engine.model_ref import is_folder_name
from orchestrator import paths
from orchestrator.config import Settings
from orchestrator.registry.db import session_scope


@dataclass(frozen=True)
class JobInputs:
    """A claimed job's references, as its registry columns hold them."""

    tenant_id: str
    kind: str
    base_model: str
    dataset_id: str | None = None
    init_from_adapter_id: str | None = None
    base_adapter_id: str | None = None
    validation_dataset_id: str | None = None

    @classmethod
    def of(cls, job: Any) -> JobInputs:
        return cls(tenant_id=job.tenant_id, kind=job.kind, base_model=job.base_model,
                   dataset_id=job.dataset_id, init_from_adapter_id=job.init_from_adapter_id,
                   base_adapter_id=job.base_adapter_id,
                   validation_dataset_id=job.validation_dataset_id)


def base_folder(settings: Settings, name: str) -> Path:
    """A base model folder a job names, confined and walked again with this worker's settings."""
    return paths.folder(name, settings, "base_model")


def local_base(settings: Settings, inputs: JobInputs) -> str:
    """Where this worker reads the job's base model from, before anything opens it: the full
    fine-tune's verified folder, a base folder confined again, else the alias or hub id."""
    if inputs.base_adapter_id is not None:
        from orchestrator.services.adapters import verified_adapter

        with session_scope(settings) as session:
            return verified_adapter(session, inputs.base_adapter_id).path
    if is_folder_name(inputs.base_model):
        return str(base_folder(settings, inputs.base_model))
    return inputs.base_model


def _listed_adapters(session: Any, listed: list[dict[str, Any]], tenant_id: str) -> list[dict[str, Any]]:
    """A reevaluate job's adapters with their verified folders; one that cannot be verified keeps
    no path and says why (`refused`), for the executor to report as skipped."""
    from lora_engine.errors import AdapterError
    from orchestrator.errors import NotFound
    from orchestrator.services.adapters import verified_adapter

    out = []
    for item in listed:
        entry = {"id": item["id"], "task": item["task"]}
        try:
            row = verified_adapter(session, item["id"])
            if row.tenant_id != tenant_id:
                raise NotFound(f"no adapter {item['id']!r} of this job's tenant")
            entry["path"] = row.path
        except (AdapterError, NotFound) as exc:
            entry["refused"] = str(exc)
        out.append(entry)
    return out


def _merge_parents(session: Any, parents: list[dict[str, Any]], tenant_id: str) -> list[dict[str, Any]]:
    """A merge job's parents with their verified folders; AdapterError for one that is gone,
    changed or not the job's tenant's."""
    from lora_engine.errors import AdapterError
    from orchestrator.errors import NotFound
    from orchestrator.services.adapters import verified_adapter

    out = []
    for item in parents:
        try:
            row = verified_adapter(session, item["id"])
            if row.tenant_id != tenant_id:
                raise NotFound(f"no adapter {item['id']!r} of this job's tenant")
        except NotFound as exc:
            raise AdapterError(f"parent adapter {item['id']}: {exc}") from None
        out.append({**item, "path": row.path})
    return out


def with_validation(train: Path, validation: Path, folder: Path) -> Path:
    """`folder/data.jsonl` (a copy of `train`) beside `folder/data.validation.jsonl` (of
    `validation`): the engine's custom data reads a `.validation.jsonl` sibling as the split it
    scores, instead of a hold-out of the training rows (lora_engine.data.custom)."""
    from lora_engine.data.custom import validation_sibling

    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "data.jsonl"
    shutil.copyfile(train, data)
    shutil.copyfile(validation, validation_sibling(data))
    return data


def rendered_chat(stored: Path, spec: dict[str, Any]) -> Path:
    """The file a generation job trains on: a chat data set (or a pair whose validation file is
    chat) rendered with the chat template of the base model this job trains (known only now;
    lora_engine.data.chat), else `stored` itself."""
    from lora_engine.catalog import TASKS
    from lora_engine.data.chat import needs_rendering, render_chat_dataset

    info = TASKS.get(spec.get("task"))  # type: ignore[arg-type]
    if info is None or info.kind != "generation" or not needs_rendering(stored):
        return stored
    from lora_engine.models import load_tokenizer

    base = spec.get("base_model") or info.base_model
    return render_chat_dataset(stored, load_tokenizer(base))


def resolve_inputs(settings: Settings, inputs: JobInputs, spec: dict[str, Any],
                   scratch: Path | None = None) -> dict[str, Any]:
    """The spec an executor runs (see the module docstring); raises for an input the job may not
    use (PathRefused, AdapterError, DataValidationError: the job's fault). `scratch`: this
    attempt's inputs folder (`artifacts.inputs_path`), for inputs put together for it."""
    from orchestrator.services.adapters import verified_adapter
    from orchestrator.services.datasets import dataset_for_training

    out = dict(spec)
    if "base_model" in out or inputs.base_adapter_id is not None:
        out["base_model"] = local_base(settings, inputs)
    with session_scope(settings) as session:
        if inputs.dataset_id is not None:
            stored = dataset_for_training(session, inputs.dataset_id, inputs.tenant_id, settings)
            if inputs.validation_dataset_id is not None:
                if scratch is None:
                    raise ValueError("a job with a validation file needs its attempt's inputs folder")
                validation = dataset_for_training(session, inputs.validation_dataset_id, inputs.tenant_id,
                                                  settings)
                stored = with_validation(stored, validation, scratch)
            out["dataset"] = str(rendered_chat(stored, out))
        if inputs.init_from_adapter_id is not None:
            out["init_from"] = verified_adapter(session, inputs.init_from_adapter_id).path
        if inputs.kind == "reevaluate" and isinstance(spec.get("adapters"), list):
            out["adapters"] = _listed_adapters(session, spec["adapters"], inputs.tenant_id)
        if inputs.kind == "merge" and isinstance(spec.get("parents"), list):
            out["parents"] = _merge_parents(session, spec["parents"], inputs.tenant_id)
    return out
