"""Which adapter a tenant's model name is, kept a while: `services.inference.served_adapter`
(one statement) once per (tenant, model name) per `LORAFLEET_SERVE_REGISTRY_CACHE_S` seconds.

A deleted adapter is refused from the next request on when its folder is gone (`adapter delete`
removes it from the artifacts: the folder is looked for, a stat, before an answer comes from
memory), else within the TTL. A name that is not found is never kept: it is looked up every
time. The files are still hashed against the registry before each load (cache.py), whatever
this answered.
"""

from __future__ import annotations

import os

from sqlalchemy.orm import Session

from orchestrator.services.inference import ServedAdapter, served_adapter
from worker.serve.ttl import TtlCache


class AdapterLookup:
    def __init__(self, ttl_s: float):
        self.held = TtlCache(ttl_s)  # (tenant id, model name) -> ServedAdapter

    def find(self, session: Session, model: str, tenant_id: str) -> ServedAdapter:
        """The tenant's live adapter `model` names (NotFound as served_adapter's)."""
        adapter: ServedAdapter | None = self.held.get((tenant_id, model))
        if adapter is not None and os.path.isdir(adapter.path):
            return adapter
        adapter = served_adapter(session, model, tenant_id)
        self.held.put((tenant_id, model), adapter)
        return adapter
