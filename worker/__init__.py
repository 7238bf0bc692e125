"""Celery GPU workers: `celery_app` (app + lifecycle signals), `tasks` (thin tasks), `runner`
(one job's execution), `policy` (the retry policy), `transport` (the embedded SQLite broker)."""

import os

# libgomp spin-waits between ops by default, which makes torch ~10x slower on shared cores; torch
# reads this when it loads (inside the first job), so a worker started from a plain shell is set.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
