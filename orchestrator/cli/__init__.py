"""The admin CLI, split by command group (tenant, job, adapter, worker, db, quickstart)."""
