"""The SQL registry: models (tables), db (engines, sessions, migrations), repositories (queries).

Callers outside `orchestrator.services` should not need the repositories: the services are the
API. Importing this package pulls in SQLAlchemy only (no torch, no Celery).
"""
