"""A job's states (the `jobs.state` CHECK constraint lists them). No SQLAlchemy here: the CLI's
option choices import them at start-up.

    queued → running → succeeded | failed | cancelled
    running → queued    (lease lost, retry, a worker's own fault)
    running → paused → queued   (a tenant's pause at a checkpoint, its resume)
    queued | paused → cancelled
"""

# `paused`: set aside by its tenant at a checkpoint (or before it ran); nothing claims or
# re-dispatches it until it is resumed (back to `queued`).
JOB_STATES = ("queued", "running", "paused", "succeeded", "failed", "cancelled")
TERMINAL_STATES = ("succeeded", "failed", "cancelled")
