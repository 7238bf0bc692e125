"""The served requests' costs, written to the registry in batches (`inference_usage`, one row per
request as before: a report counts them alike) by a thread of their own, every
`LORAFLEET_SERVE_USAGE_FLUSH_MS` milliseconds or as soon as `LORAFLEET_SERVE_USAGE_FLUSH_ROWS`
rows wait, so a request pays for neither a transaction nor a commit. `close()` (the server's
stop: SIGTERM, Ctrl-C) writes what is left, so a clean stop loses nothing. A registry that
refuses a write keeps the rows for the next try (logged); only a crash between two writes, or a
registry still refusing at the stop, loses the rows of that interval (logged with their count).
"""

from __future__ import annotations

import logging
import threading

from orchestrator.config import Settings
from orchestrator.registry.models import utcnow
from orchestrator.services.inference import InferenceRecord, record_inference

log = logging.getLogger("lorafleet.serve")


class UsageWriter:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.every_s = settings.serve_usage_flush_ms / 1000
        self.rows = settings.serve_usage_flush_rows
        self.pending: list[InferenceRecord] = []
        self.wake = threading.Condition()
        self.closing = False
        self.thread = threading.Thread(target=self._run, name="serve-usage", daemon=True)
        self.thread.start()

    def add(self, tenant_id: str, *, adapter_id: str | None, base_model: str, route: str, prompt_tokens: int,
            completion_tokens: int, device_seconds: float, device: str) -> None:
        """A served request's cost (from any thread; the event loop's included: it never blocks on
        the registry)."""
        record = InferenceRecord(tenant_id, adapter_id, base_model, route, prompt_tokens, completion_tokens,
                                 device_seconds, device, utcnow())
        with self.wake:
            if not self.closing:
                self.pending.append(record)
                if len(self.pending) >= self.rows:
                    self.wake.notify()
                return
        self._write([record])  # after the stop (a stream ending late): written at once

    def close(self) -> None:
        """Write what waits and stop the thread."""
        with self.wake:
            self.closing = True
            self.wake.notify()
        self.thread.join()

    def _run(self) -> None:
        failed = False
        while True:
            with self.wake:
                if not self.closing and (failed or len(self.pending) < self.rows):
                    self.wake.wait(self.every_s)
                closing = self.closing
                batch, self.pending = self.pending, []
            failed = bool(batch) and not self._write(batch)
            if failed:
                with self.wake:
                    self.pending[:0] = batch  # kept, before what came meanwhile
            if closing:
                with self.wake:
                    if self.pending:
                        log.error("%d inference usage row(s) not written: the registry refused them at the "
                                  "stop", len(self.pending))
                return

    def _write(self, batch: list[InferenceRecord]) -> bool:
        from orchestrator.registry.db import session_scope

        try:
            with session_scope(self.settings) as session:
                record_inference(session, batch)
            return True
        except Exception as exc:
            log.warning("inference usage not written yet (%d rows; %s: %s); retried at the next flush",
                        len(batch), type(exc).__name__, str(exc)[:200])
            return False
