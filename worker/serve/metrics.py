"""Prometheus instruments of the inference server (served on LORAFLEET_SERVE_METRICS_PORT).

Adapter loads and evictions are counted so an operator sees a cache too small for the traffic
(loads far above distinct adapters); series carry no tenant ids or adapter ids."""

from __future__ import annotations

from typing import Any

_metrics: dict[str, Any] = {}


def instruments() -> dict[str, Any]:
    if not _metrics:
        from prometheus_client import Counter, Gauge, Histogram

        _metrics["loads"] = Counter("lorafleet_serve_adapter_loads", "adapters loaded (sha256 verified)")
        _metrics["evictions"] = Counter("lorafleet_serve_adapter_evictions",
                                        "adapters evicted from the cache (least recently used)")
        # One serving process; `livesum` so the multiprocess exporter (orchestrator.api.metrics)
        # shows one series, not one per pid.
        _metrics["cached_bytes"] = Gauge("lorafleet_serve_adapter_cache_bytes", "adapter bytes loaded",
                                         multiprocess_mode="livesum")
        _metrics["cached"] = Gauge("lorafleet_serve_adapters_loaded", "adapters loaded",
                                   multiprocess_mode="livesum")
        _metrics["tokens"] = Counter("lorafleet_serve_tokens", "tokens served", ["direction"])
        _metrics["batch"] = Histogram("lorafleet_serve_batch_requests", "requests per classify forward",
                                      buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        _metrics["decode_rows"] = Histogram("lorafleet_serve_decode_rows", "generation rows per decode step",
                                            buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        _metrics["rows"] = Gauge("lorafleet_serve_rows_decoding", "generation rows in the decode batch",
                                 multiprocess_mode="livesum")
        # Continuous batching at work: requests served while a generation batch was decoding
        # (generation rows that joined it between steps, classify forwards run between steps).
        _metrics["joined"] = Counter("lorafleet_serve_joined", "requests served between decode steps",
                                     ["kind"])
        _metrics["cancelled"] = Counter("lorafleet_serve_rows_cancelled",
                                        "generation rows dropped because their client went away")
    return _metrics
