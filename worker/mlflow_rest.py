"""A small client of MLflow's REST API: what `worker.tracking` needs to write a job's run, no more.

    experiments/get-by-name | experiments/create   the tenant's experiment (created once)
    runs/search (tag lorafleet.job_id)             the job's run, if an earlier attempt made it
    runs/create, runs/log-batch, runs/update       the run, its params, tags and metric points, its end
    mlflow-artifacts/artifacts/<run's path>/...    the adapter's files (PUT, one per file), through
                                                   the server's artifact proxy (`--serve-artifacts`)

Why not the `mlflow` package: it is a large install (pandas, pyarrow, Flask, OpenTelemetry, …)
into every GPU worker's image for five HTTP calls, and its client retries and blocks on its own
schedule, while the sink needs one retry policy (its own back-off, then give up) and a timeout per
request. `mlflow-skinny` still brings its own retry policy and a dozen packages. httpx is already
a dependency (the API, the webhook senders). The REST endpoints used here are MLflow's documented,
versioned `/api/2.0` ones; the tests run them against a real `mlflow server`.

Errors: `MlflowError`, `transient` when another try may succeed (no connection, a timeout, 429 or
5xx), permanent otherwise (the server refused the request itself: 4xx).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlparse

import httpx

API = "/api/2.0/mlflow"
ARTIFACTS_API = "/api/2.0/mlflow-artifacts/artifacts"
PROXIED_SCHEME = "mlflow-artifacts"
# log-batch's limits per request (MLflow's REST API reference).
MAX_METRICS, MAX_PARAMS, MAX_TAGS = 1000, 100, 100
ERROR_TEXT_MAX = 300


class MlflowError(Exception):
    """A request MLflow did not carry out; `transient`: another try later may succeed."""

    def __init__(self, message: str, transient: bool):
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class Run:
    run_id: str
    artifact_uri: str
    # The latest step MLflow holds per metric key (a run an earlier attempt wrote: what not to resend)
    latest_steps: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class MetricValue:
    key: str
    value: float
    step: int
    timestamp_ms: int


class MlflowClient:
    """One tracking server (`base_url`: the operator's LORAFLEET_MLFLOW_TRACKING_URI)."""

    def __init__(self, base_url: str, timeout_s: float):
        # `user:password@` in the URL becomes basic auth, and leaves the URL: httpx logs each
        # request's URL, and errors may quote it.
        url = httpx.URL(base_url.rstrip("/"))
        auth = (unquote(url.username), unquote(url.password)) if url.username or url.password else None
        self.http = httpx.Client(base_url=url.copy_with(username=None, password=None), auth=auth,
                                 timeout=timeout_s, follow_redirects=False)

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, path: str, *, body: Any = None, params: Mapping[str, str] | None = None,
              content: Any = None) -> dict[str, Any]:
        try:
            answer = self.http.request(method, path, json=body, params=params, content=content)
        except httpx.HTTPError as exc:  # no connection, a timeout, a broken answer
            raise MlflowError(f"{method} {path}: {type(exc).__name__}: {exc}"[:ERROR_TEXT_MAX],
                              transient=True) from None
        if answer.status_code >= 400:
            text = answer.text[:ERROR_TEXT_MAX]
            transient = answer.status_code == 429 or answer.status_code >= 500
            raise MlflowError(f"{method} {path}: HTTP {answer.status_code}: {text}", transient=transient)
        try:
            data = answer.json() if answer.content else {}
        except ValueError:
            raise MlflowError(f"{method} {path}: the answer is not JSON", transient=True) from None
        return data if isinstance(data, dict) else {}

    def experiment_id(self, name: str) -> str:
        """The id of the experiment `name`, created if it does not exist (a concurrent creation by
        another worker is read back)."""
        try:
            return str(self._call("GET", f"{API}/experiments/get-by-name",
                                  params={"experiment_name": name})["experiment"]["experiment_id"])
        except MlflowError as exc:
            if exc.transient or "RESOURCE_DOES_NOT_EXIST" not in str(exc):
                raise
        try:
            return str(self._call("POST", f"{API}/experiments/create", body={"name": name})["experiment_id"])
        except MlflowError as exc:
            if exc.transient or "RESOURCE_ALREADY_EXISTS" not in str(exc):
                raise
        return str(self._call("GET", f"{API}/experiments/get-by-name",
                              params={"experiment_name": name})["experiment"]["experiment_id"])

    def find_run(self, experiment_id: str, tag: str, value: str) -> Run | None:
        """The run of the experiment whose tag `tag` is `value` (lorafleet writes it at creation)."""
        quoted = value.replace("\\", "\\\\").replace("'", "\\'")
        found = self._call("POST", f"{API}/runs/search", body={
            "experiment_ids": [experiment_id], "filter": f"tags.`{tag}` = '{quoted}'", "max_results": 1})
        runs = found.get("runs") or []
        return _run(runs[0]) if runs else None

    def create_run(self, experiment_id: str, run_name: str, start_ms: int, tags: Mapping[str, str]) -> Run:
        created = self._call("POST", f"{API}/runs/create", body={
            "experiment_id": experiment_id, "run_name": run_name, "start_time": start_ms,
            "tags": [{"key": k, "value": v} for k, v in tags.items()]})
        return _run(created["run"])

    def log_batch(self, run_id: str, metrics: Sequence[MetricValue] = (),
                  params: Mapping[str, str] | None = None, tags: Mapping[str, str] | None = None) -> None:
        """Log everything given, in as many requests as log-batch's limits need. Params are
        write-once in MLflow: the same value again is accepted, another one refused."""
        param_items, tag_items = list((params or {}).items()), list((tags or {}).items())
        for i in range(0, len(metrics), MAX_METRICS):
            self._call("POST", f"{API}/runs/log-batch", body={"run_id": run_id, "metrics": [
                {"key": m.key, "value": m.value, "step": m.step, "timestamp": m.timestamp_ms}
                for m in metrics[i:i + MAX_METRICS]]})
        for i in range(0, max(len(param_items), len(tag_items)), MAX_PARAMS):
            self._call("POST", f"{API}/runs/log-batch", body={
                "run_id": run_id,
                "params": [{"key": k, "value": v} for k, v in param_items[i:i + MAX_PARAMS]],
                "tags": [{"key": k, "value": v} for k, v in tag_items[i:i + MAX_TAGS]]})

    def finish_run(self, run_id: str, status: str, end_ms: int) -> None:
        """`status`: FINISHED, FAILED or KILLED."""
        self._call("POST", f"{API}/runs/update",
                   body={"run_id": run_id, "status": status, "end_time": end_ms})

    def upload_folder(self, run: Run, folder: Path, under: str) -> int:
        """PUT every regular file of `folder` as the run's artifacts under `under/`; returns how
        many. A server that does not proxy artifacts (a run's artifact URI that is not
        mlflow-artifacts:) cannot take them over REST: a permanent MlflowError says so."""
        parsed = urlparse(run.artifact_uri)
        if parsed.scheme != PROXIED_SCHEME:
            raise MlflowError(f"the server stores artifacts at {parsed.scheme or run.artifact_uri!r}:, which "
                              f"the REST API cannot write; run `mlflow server` with --serve-artifacts",
                              transient=False)
        root = parsed.path.strip("/")
        files = sorted(_files(folder))
        for path in files:
            relative = path.relative_to(folder).as_posix()
            with path.open("rb") as handle:
                self._call("PUT", f"{ARTIFACTS_API}/{quote(root)}/{quote(under)}/{quote(relative)}",
                           content=handle)
        return len(files)


def _run(data: Mapping[str, Any]) -> Run:
    info = data["info"]
    metrics = (data.get("data") or {}).get("metrics") or []
    return Run(run_id=str(info["run_id"]), artifact_uri=str(info.get("artifact_uri", "")),
               latest_steps={str(m["key"]): int(m.get("step", 0)) for m in metrics})


def _files(folder: Path) -> Iterable[Path]:
    """The regular files under `folder` (links are not followed: the folder is lorafleet's own)."""
    for parent, dirs, names in os.walk(folder, followlinks=False):
        dirs[:] = [d for d in dirs if not Path(parent, d).is_symlink()]
        for name in names:
            path = Path(parent, name)
            if path.is_file() and not path.is_symlink():
                yield path
