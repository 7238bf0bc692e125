"""The reconciler inside a worker process: a daemon thread, one pass every `reconcile_every_s`.

An embedded installation has no reconciler container and often no operator watching, so its
worker runs the passes itself; without them a killed worker's job would stay `running` until
someone ran `lorafleet reconcile`. A thread (not Celery beat) because a beat message would wait
in the solo pool behind the very job that is training. Passes from several processes are safe:
each takes the expired jobs' row locks, and a duplicate message finds nothing to claim.

Beside it runs the webhook sender (`orchestrator.webhook_delivery.WebhookSender`): the outbox is
polled far more often than the reconciler passes (and the sender wakes when a job of this very
worker ends), so a receiver hears of a job's end within a second, not a pass later.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from orchestrator.config import Settings

if TYPE_CHECKING:
    from orchestrator.webhook_delivery import WebhookSender

log = logging.getLogger(__name__)


class ReconcilerThread(threading.Thread):
    def __init__(self, settings: Settings):
        super().__init__(name="reconciler", daemon=True)
        self.settings = settings
        self._stop_event = threading.Event()
        self._sender: WebhookSender | None = None

    def run(self) -> None:
        from orchestrator.announce import reconcile_once
        from orchestrator.webhook_delivery import WebhookSender

        self._sender = WebhookSender(self.settings)
        self._sender.start()
        while not self._stop_event.wait(self.settings.reconcile_every_s):
            try:
                report = reconcile_once(settings=self.settings, webhooks=False)
            except Exception:  # a registry or broker hiccup: the next pass tries again
                log.warning("reconciler pass failed", exc_info=True)
                continue
            moved = {k: v for k, v in report.items() if v and k != "dispatched"}
            if moved:
                log.info("reconciler: %s", moved)

    def stop(self) -> None:
        self._stop_event.set()
        if self._sender is not None:
            self._sender.stop()
