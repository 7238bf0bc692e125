"""Celery GPU workers: `celery_app` (app + lifecycle signals), `tasks` (thin tasks), `runner`
(one job's execution), `policy` (the retry policy), `transport` (the embedded SQLite broker)."""
