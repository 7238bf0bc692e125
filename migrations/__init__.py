"""Alembic migrations of the registry (env.py takes the URL from orchestrator config)."""
