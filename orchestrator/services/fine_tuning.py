"""OpenAI's fine-tuning request, mapped onto lorafleet's training spec and submitted by the same
service as the CLI's `job submit` (`jobs.submit_within`): one set of rules, one transaction.

    model                   a base tenants may use (`base_models`), or the tenant's own full
                            fine-tune by its `ft:` name or adapter id            -> base_model
    training_file           builtin-glue-<task> | builtin-e2e: that task; a tenant's file: its
                            data set (custom-classification | custom-generation) -> task, dataset
    validation_file         a tenant's file of the same kind, replacing the held-out split that
                            evaluation scores (not with a built-in task: its official split)
    hyperparameters or      n_epochs -> epochs, batch_size -> batch_size, learning_rate_multiplier
    method.supervised.        x the method's default lr -> lr; each a number or "auto"
      hyperparameters
    seed, suffix, metadata  spec seed; the job's suffix (its model name) and labels
    method                  {"type": "supervised"} only (OpenAI's training paradigm; a LoRA
                            method such as "pissa" there is pointed to lorafleet.method)
    integrations            lorafleet's one type, `mlflow`, shaped as OpenAI's `wandb` entry:
                            [{"type": "mlflow", "mlflow": {"enabled": false}}] keeps the job out
                            of the operator's MLflow server (a tenant never names a server);
                            any other type is refused, naming the allowed one
    lorafleet               lorafleet's own spec fields (method lora|rslora|dora|loraplus|pissa|
                            olora|full, rank, alpha, loraplus_lr_ratio, targets, max_steps, ...),
                            validated by the same TrainingSpec

Every problem of a request is reported at once, in one `RequestProblems` (a 400 naming the first
problem's field as `param`), each as `<field>: <what is wrong>` with the request's own field names.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from sqlalchemy.orm import Session

from lora_engine.catalog import TASKS, method_defaults
from lora_engine.errors import SpecError, listed
from lora_engine.methods import BY_NAME, NAMES
from lora_engine.model_ref import MODEL_ALIASES
from lora_engine.spec import AUTO, TrainingSpec
from orchestrator.config import Settings, get_settings
from orchestrator.errors import InvalidInput, NotFound
from orchestrator.refs import spelled_as_id
from orchestrator.registry.models import Job
from orchestrator.services._tx import transactional
from orchestrator.services.base_models import base_problem, looks_like_path
from orchestrator.services.jobs import JobLabels, submit_within

FIELDS = ("model", "training_file", "validation_file", "hyperparameters", "method", "suffix", "seed",
          "metadata", "integrations", "lorafleet")
HYPERPARAMETERS = ("n_epochs", "batch_size", "learning_rate_multiplier")
METHOD_TYPES = ("supervised",)
INTEGRATION_TYPES = ("mlflow",)
MLFLOW_FIELDS = ("enabled",)
# What the request's other fields already say: not again in the `lorafleet` object.
NOT_IN_LORAFLEET = {"task": "training_file", "dataset": "training_file", "base_model": "model",
                    "init_from": None}
# A spec field's problems are reported under the request field it came from.
SPEC_SOURCES = {"epochs": "hyperparameters.n_epochs", "batch_size": "hyperparameters.batch_size",
                "lr": "hyperparameters.learning_rate_multiplier", "seed": "seed", "base_model": "model",
                "dataset": "training_file", "task": "training_file"}
# OpenAI's limits on metadata and suffix.
MAX_METADATA_PAIRS, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512
MAX_SUFFIX = 64
SUFFIX_RE = re.compile(r"^[A-Za-z0-9._-]+$")
SEED_MAX = 2**31 - 1


class RequestProblems(InvalidInput):
    """A fine-tuning request with problems, all of them; `param`: the first one's field."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        self.param = self.problems[0].split(":", 1)[0] if self.problems else None
        super().__init__("invalid fine-tuning job:\n" + listed(self.problems))


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class _Request:
    """One request being mapped: the spec so far, the job's labels, every problem."""

    def __init__(self, body: Mapping[str, Any]):
        self.body = body
        self.spec: dict[str, Any] = {}
        self.problems: list[str] = []
        self.multiplier: float | None = None
        self.metadata: dict[str, str] | None = None
        self.suffix: str | None = None
        self.validation_dataset_id: str | None = None
        self.tracking = True

    def problem(self, field: str, message: str) -> None:
        self.problems.append(f"{field}: {message}")


def _string(req: _Request, field: str, required: bool = False) -> str | None:
    value = req.body.get(field)
    if value is None:
        if required:
            req.problem(field, "required")
        return None
    if not isinstance(value, str) or not value:
        req.problem(field, f"must be a non-empty string (got {_shown(value)})")
        return None
    return value


def _model(session: Session, req: _Request, tenant: str, settings: Settings) -> None:
    from orchestrator.services.model_names import parse_model_name

    model = _string(req, "model", required=True)
    if model is None:
        return
    if len(model) > 300:
        req.problem("model", f"at most 300 characters (got {len(model)})")
        return
    adapter_id = parse_model_name(model)
    if adapter_id is not None or (spelled_as_id(model) and not looks_like_path(model)):
        _own_full_fine_tune(session, req, tenant, adapter_id or model)
        return
    why = base_problem(model, settings)
    if why:
        req.problem("model", why)
    else:
        req.spec["base_model"] = model


def _own_full_fine_tune(session: Session, req: _Request, tenant: str, adapter_id: str) -> None:
    """A base model named by the tenant's own fine-tuned model: only a full fine-tune is one."""
    from orchestrator.services.adapters import adapter_or_404

    shown = _shown(req.body["model"])
    try:
        row = adapter_or_404(session, adapter_id, tenant)
    except (NotFound, InvalidInput):
        req.problem("model", f"no fine-tuned model {shown} of yours; see GET /v1/models")
        return
    if row.method != "full":
        req.problem("model", f"{shown} is a {row.method} fine-tune; only a full "
                             f"fine-tune (lorafleet.method \"full\") can be the base model of another job")
        return
    req.spec["base_model"] = row.id  # the submit resolves it again, as for the CLI


def _file(session: Session, req: _Request, field: str, tenant: str) -> tuple[str, Any] | None:
    from orchestrator.services.files import training_source

    file_id = _string(req, field, required=field == "training_file")
    if file_id is None:
        return None
    try:
        return training_source(session, file_id, tenant)
    except NotFound as exc:
        req.problem(field, f"{exc}; list your files with GET /v1/files")
        return None


def _files(session: Session, req: _Request, tenant: str) -> None:
    training = _file(session, req, "training_file", tenant)
    validation = _file(session, req, "validation_file", tenant)
    if training is None:
        return
    what, source = training
    if what == "task":
        req.spec["task"] = source
    else:
        req.spec["task"] = f"custom-{source.kind}"
        req.spec["dataset"] = source.id
    if validation is None:
        return
    v_what, v_source = validation
    if what == "task":
        req.problem("validation_file", f"{req.body['training_file']} is a built-in task scored on its "
                                       f"official validation split; a validation file is for your own files")
    elif v_what == "task":
        req.problem("validation_file", "must be one of your own files, not a built-in one")
    elif v_source.kind != source.kind:
        req.problem("validation_file", f"holds {v_source.kind} rows, the training file {source.kind} rows")
    else:
        req.validation_dataset_id = v_source.id


def _hyperparameters(req: _Request) -> None:
    given = req.body.get("hyperparameters")
    where = "hyperparameters"
    method = req.body.get("method")
    nested = None
    if isinstance(method, Mapping) and isinstance(method.get("supervised"), Mapping):
        nested = method["supervised"].get("hyperparameters")
    if given is not None and nested is not None:
        req.problem("hyperparameters", "give hyperparameters once: at the top level or in "
                                       "method.supervised.hyperparameters")
        return
    if nested is not None:
        given, where = nested, "method.supervised.hyperparameters"
    if given is None:
        return
    if not isinstance(given, Mapping):
        req.problem(where, f"must be an object (got {_shown(given)})")
        return
    unknown = [k for k in given if k not in HYPERPARAMETERS]
    if unknown:
        req.problem(where, f"unknown field(s) {', '.join(_shown(k) for k in unknown[:10])}; allowed: "
                           f"{', '.join(HYPERPARAMETERS)}")
    for name, spec_field in (("n_epochs", "epochs"), ("batch_size", "batch_size")):
        value = given.get(name)
        if value is None or value == AUTO:
            continue
        if not _is_number(value) or (name == "batch_size" and not isinstance(value, int)):
            kind = "an integer" if name == "batch_size" else "a number"
            req.problem(f"{where}.{name}", f"must be {kind} or \"auto\" (got {_shown(value)})")
        else:
            req.spec[spec_field] = value
    value = given.get("learning_rate_multiplier")
    if value is not None and value != AUTO:
        if not _is_number(value) or not 0 < value <= 100:
            req.problem(f"{where}.learning_rate_multiplier",
                        f"must be a number > 0 and <= 100, or \"auto\" (got {_shown(value)})")
        else:
            req.multiplier = float(value)


def _method(req: _Request) -> None:
    method = req.body.get("method")
    if method is None:
        return
    if not isinstance(method, Mapping):
        req.problem("method", f"must be an object like {{\"type\": \"supervised\"}} (got {_shown(method)})")
        return
    kind = method.get("type")
    if isinstance(kind, str) and kind in BY_NAME:  # a LoRA method where OpenAI names the paradigm
        req.problem("method.type", f"{_shown(kind)} is a lorafleet method: give it as "
                                   f"lorafleet.method (methods: {', '.join(NAMES)}); method.type is "
                                   f"OpenAI's training paradigm, {', '.join(repr(t) for t in METHOD_TYPES)}")
    elif kind not in METHOD_TYPES:
        req.problem("method.type", f"{_shown(kind)} is not supported; lorafleet fine-tunes with "
                                   f"{', '.join(repr(t) for t in METHOD_TYPES)} only")
    unknown = [k for k in method if k not in ("type", "supervised")]
    if unknown:
        req.problem("method", f"unknown field(s) {', '.join(_shown(k) for k in unknown[:10])}; "
                              f"allowed: type, supervised")
    supervised = method.get("supervised")
    if supervised is not None and (not isinstance(supervised, Mapping)
                                   or any(k != "hyperparameters" for k in supervised)):
        req.problem("method.supervised", "must be an object with only \"hyperparameters\"")


def _integrations(req: _Request) -> None:
    """OpenAI's `integrations` list, with lorafleet's one type: `mlflow` (an opt-out of the
    operator's tracking server; what a tenant sends there is data, never where to send it)."""
    value = req.body.get("integrations")
    if value is None:
        return
    if not isinstance(value, list):
        req.problem("integrations", f"must be a list (got {_shown(value)})")
        return
    if len(value) > len(INTEGRATION_TYPES):
        req.problem("integrations", f"at most {len(INTEGRATION_TYPES)} entry, one per type "
                                    f"(got {len(value)})")
        return
    allowed = ", ".join(repr(t) for t in INTEGRATION_TYPES)
    for i, item in enumerate(value):
        where = f"integrations[{i}]"
        if not isinstance(item, Mapping):
            req.problem(where, f"must be an object like {{\"type\": \"mlflow\", \"mlflow\": "
                               f"{{\"enabled\": false}}}} (got {_shown(item)})")
            continue
        kind = item.get("type")
        if kind not in INTEGRATION_TYPES:
            req.problem(where, f"integration type {_shown(kind)} is not supported; "
                               f"allowed: {allowed}")
            continue
        unknown = [k for k in item if k not in ("type", kind)]
        if unknown:
            req.problem(where, f"unknown field(s) {', '.join(_shown(k) for k in unknown[:10])}; "
                               f"allowed: type, {kind}")
        options = item.get(kind)
        if options is None:
            continue
        if not isinstance(options, Mapping):
            req.problem(f"{where}.{kind}", f"must be an object like {{\"enabled\": false}} "
                                           f"(got {_shown(options)})")
            continue
        unknown = [k for k in options if k not in MLFLOW_FIELDS]
        if unknown:
            req.problem(f"{where}.{kind}", f"unknown field(s) {', '.join(_shown(k) for k in unknown[:10])}; "
                                           f"allowed: {', '.join(MLFLOW_FIELDS)}")
        enabled = options.get("enabled", True)
        if not isinstance(enabled, bool):
            req.problem(f"{where}.{kind}.enabled", f"must be true or false (got {_shown(enabled)})")
        else:
            req.tracking = enabled


def _seed(req: _Request) -> None:
    value = req.body.get("seed")
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= SEED_MAX:
        req.problem("seed", f"must be an integer from 0 to {SEED_MAX} (got {_shown(value)})")
    else:
        req.spec["seed"] = value


def _suffix(req: _Request) -> None:
    value = req.body.get("suffix")
    if value is None:
        return
    if not isinstance(value, str) or not value or len(value) > MAX_SUFFIX or not SUFFIX_RE.match(value):
        req.problem("suffix", f"must be 1 to {MAX_SUFFIX} letters, digits, '.', '_' or '-' "
                              f"(got {_shown(value)})")
    else:
        req.suffix = value


def metadata_problems(value: Any, field: str = "metadata") -> list[str]:
    """Why `value` is not a job's metadata (OpenAI's limits): at most 16 pairs, string keys of at
    most 64 characters, string values of at most 512."""
    if not isinstance(value, Mapping):
        return [f"{field}: must be an object of string keys and values (got {_shown(value)})"]
    problems = []
    if len(value) > MAX_METADATA_PAIRS:
        problems.append(f"{field}: at most {MAX_METADATA_PAIRS} pairs (got {len(value)})")
    for key, item in list(value.items())[:MAX_METADATA_PAIRS + 1]:
        if not isinstance(key, str) or not key or len(key) > MAX_METADATA_KEY:
            problems.append(f"{field}: keys are strings of 1 to {MAX_METADATA_KEY} characters "
                            f"(got {_shown(key)})")
        elif not isinstance(item, str) or len(item) > MAX_METADATA_VALUE:
            problems.append(f"{field}.{key}: values are strings of at most {MAX_METADATA_VALUE} "
                            f"characters (got {_shown(item)})")
    return problems


def _metadata(req: _Request) -> None:
    value = req.body.get("metadata")
    if value is None:
        return
    problems = metadata_problems(value)
    req.problems += problems
    if not problems:
        req.metadata = dict(value)


def _lorafleet(req: _Request) -> None:
    value = req.body.get("lorafleet")
    if value is None:
        return
    if not isinstance(value, Mapping):
        req.problem("lorafleet", f"must be an object of lorafleet's spec fields (got {_shown(value)})")
        return
    fields = TrainingSpec.model_fields
    for key, item in value.items():
        if key in NOT_IN_LORAFLEET:
            instead = NOT_IN_LORAFLEET[key]
            req.problem(f"lorafleet.{key}", f"given by {instead}" if instead else "not through the API")
        elif key not in fields:
            allowed = ", ".join(f for f in fields if f not in NOT_IN_LORAFLEET)
            req.problem(f"lorafleet.{str(key)[:64]}", f"unknown field; allowed: {allowed}")
        elif key in req.spec:
            req.problem(f"lorafleet.{key}", f"given twice: also as {SPEC_SOURCES.get(key, key)}")
        else:
            req.spec[key] = item
    if req.multiplier is not None and "lr" in req.spec:
        req.problem("lorafleet.lr", "given twice: also as a learning_rate_multiplier")


def default_lr(spec: Mapping[str, Any]) -> float | None:
    """The learning rate the spec's method uses by default on its task and base (what
    `learning_rate_multiplier` multiplies); None when the spec does not say enough."""
    task, method, rank = spec.get("task"), spec.get("method", "lora"), spec.get("rank", 8)
    if task not in TASKS or not isinstance(method, str) or not isinstance(rank, int) or rank < 1:
        return None
    base = spec.get("base_model") or TASKS[task].base_model
    try:
        return float(method_defaults(TASKS[task], method, MODEL_ALIASES.get(base), rank)["lr"])
    except (KeyError, ValueError):
        return None


def _spec_problems(problems: list[str]) -> list[str]:
    """The spec's problems under the request's field names."""
    out = []
    for problem in problems:
        field, sep, rest = problem.partition(":")
        head = field.split(".", 1)[0].strip()
        if sep and head in TrainingSpec.model_fields:
            source = SPEC_SOURCES.get(head, f"lorafleet.{field.strip()}")
            out.append(f"{source}:{rest}")
        else:
            out.append(problem)
    return out


def _other_spec_problems(spec: dict[str, Any]) -> list[str]:
    """The spec's own problems, to report beside the request's (its base model is checked by the
    submit, which resolves a full fine-tune's id; without a task there is nothing to check)."""
    from lora_engine.spec import validate_spec

    if "task" not in spec:
        return []
    try:
        validate_spec({k: v for k, v in spec.items() if k != "base_model"})
    except SpecError as exc:
        return _spec_problems(exc.problems)
    return []


def fine_tuning_spec(session: Session, tenant: str, body: Any, settings: Settings) -> tuple[dict, JobLabels]:
    """Inside a service: the training spec and the job's labels a request asks for, or
    RequestProblems listing everything wrong with it (the spec's own checks run in the submit)."""
    if not isinstance(body, Mapping):
        raise RequestProblems([f"body: must be a JSON object (got {_shown(body)})"])
    req = _Request(body)
    unknown = [k for k in body if k not in FIELDS]
    if unknown:
        req.problems.append(f"{str(unknown[0])[:64]}: unknown field(s) "
                            f"{', '.join(_shown(k) for k in unknown[:10])}; allowed: {', '.join(FIELDS)}")
    _model(session, req, tenant, settings)
    _files(session, req, tenant)
    _method(req)
    _hyperparameters(req)
    _integrations(req)
    _seed(req)
    _suffix(req)
    _metadata(req)
    _lorafleet(req)
    if req.multiplier is not None:
        lr = default_lr(req.spec)
        if lr is not None:
            req.spec["lr"] = lr * req.multiplier
    if req.problems:
        raise RequestProblems(req.problems + _other_spec_problems(req.spec))
    return req.spec, JobLabels(metadata=req.metadata, suffix=req.suffix,
                               validation_dataset_id=req.validation_dataset_id, tracking=req.tracking)


@transactional
def create_fine_tuning_job(session: Session, tenant_slug: str, body: Any,
                           settings: Settings | None = None) -> Job:
    """Queue the job an OpenAI fine-tuning request asks for (see the module docstring); returns it,
    `queued`, its message sent after the commit. RequestProblems (every problem at once),
    QuotaExceeded, NotFound (the tenant) as from `job submit`."""
    settings = settings or get_settings()
    spec, labels = fine_tuning_spec(session, tenant_slug, body, settings)
    try:
        return submit_within(session, tenant_slug, spec, labels=labels, settings=settings)
    except SpecError as exc:
        raise RequestProblems(_spec_problems(exc.problems)) from None
