"""`lorafleet serve`: the inference server (FastAPI + uvicorn; torch lives here, never in the API).

    app.py       the application: the API's auth, errors and body limit, these routes
    auth.py      the API's key check, a verified key kept a few seconds (LORAFLEET_SERVE_REGISTRY_CACHE_S)
    lookup.py    which adapter a tenant's model name is: one statement, kept as long
    ttl.py       the small expiring dict those two keep
    usage.py     the requests' usage rows, written in batches by a thread, the rest at the stop
    routes.py    /v1/chat/completions, /v1/completions, /v1/classify, /v1/models
    schemas.py   the request bodies, bounded
    prompts.py   how a request becomes an adapter's prompt (chat template or prompt template)
    batcher.py   the batching window: requests wait a few ms for company, one engine thread
    cache.py     the adapter LRU, bounded in bytes, sha256 verified on every load
    engine.py    the seam to the model code (`Engine`), and `PredictorEngine` (one model per adapter:
                 regression adapters and full fine-tunes)
    batched.py   `BatchedEngine` over lora_engine.serving (one resident base, mixed-adapter batches),
                 the engine app.make_engine runs
    metrics.py   Prometheus counters of the server
"""
