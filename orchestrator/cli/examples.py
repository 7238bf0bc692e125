"""One example per command, shown at the end of its `--help` (attached when the
command is loaded, `cli/lazy.py`).

Kept in one table so every command has one (a test walks the command tree) and a command's own
docstring can stay about what it does. A command whose help already has an example keeps it.
"""

from __future__ import annotations

from typing import Any

EXAMPLES: dict[str, list[str]] = {
    "tenant create": ["lorafleet tenant create acme --name 'Acme Corp' --max-running 2"],
    "tenant list": ["lorafleet tenant list --json"],
    "tenant show": ["lorafleet tenant show acme"],
    "tenant rename": ["lorafleet tenant rename acme 'Acme Research'"],
    "tenant set-quota": ["lorafleet tenant set-quota acme --max-running 4 --device-hours-per-month 100"],
    "tenant key create": ["lorafleet tenant key create acme --name ci --expires 90 --json"],
    "tenant key list": ["lorafleet tenant key list acme"],
    "tenant key revoke": ["lorafleet tenant key revoke 0d9b6c8e-2f4a-4e7b-9a51-3c2d1e0f9a87"],
    "tenant webhook add": ["lorafleet tenant webhook add acme https://hooks.acme.example/lorafleet "
                           "--event fine_tuning.job.failed --json"],
    "tenant webhook list": ["lorafleet tenant webhook list acme --json"],
    "tenant webhook remove": ["lorafleet tenant webhook remove 6a1f0c3e-8b2d-4c9a-9e7f-1d2c3b4a5e6f"],
    "tenant webhook deliveries": ["lorafleet tenant webhook deliveries 6a1f0c3e --limit 5 --json"],
    "key create": ["lorafleet key create --operator --name ops --json"],
    "key list": ["lorafleet key list --operator --json"],
    "key revoke": ["lorafleet key revoke 0d9b6c8e-2f4a-4e7b-9a51-3c2d1e0f9a87"],
    "api serve": ["lorafleet api serve --port 8000 --workers 2"],
    "serve": ["LORAFLEET_SERVE_ADAPTER_CACHE_BYTES=2000000000 lorafleet serve --host 127.0.0.1 --port 8001"],
    "dataset upload": ["lorafleet dataset upload --tenant acme --kind classification reviews.jsonl"],
    "dataset list": ["lorafleet dataset list --tenant acme"],
    "dataset show": ["lorafleet dataset show 5c1e9a20"],
    "dataset delete": ["lorafleet dataset delete 5c1e9a20"],
    "job submit": ["lorafleet job submit --tenant acme --task sst2 --rank 8 --wait",
                   "lorafleet job submit --tenant acme --task mrpc --init-from 8f2a81c1 --epochs 3"],
    "job submit-batch": ["lorafleet job submit-batch examples/glue_five_tasks.yaml"],
    "job list": ["lorafleet job list --tenant acme --state running --wide"],
    "job show": ["lorafleet job show 3f2a1b9c --json"],
    "job cancel": ["lorafleet job cancel 3f2a1b9c"],
    "job pause": ["lorafleet job pause 3f2a1b9c && lorafleet job show 3f2a1b9c"],
    "job resume": ["lorafleet job resume 3f2a1b9c && lorafleet job events --follow 3f2a1b9c"],
    "job retry": ["lorafleet job retry 3f2a1b9c && lorafleet job events --follow 3f2a1b9c"],
    "adapter list": ["lorafleet adapter list --tenant acme --task sst2"],
    "adapter show": ["lorafleet adapter show 8f2a81c1"],
    "adapter export": ["lorafleet adapter export 8f2a81c1 ./sst2-adapter",
                       "lorafleet adapter export 8f2a81c1 ./sst2-model --merged"],
    "adapter delete": ["lorafleet adapter delete 8f2a81c1 --yes"],
    "adapter predict": ["lorafleet adapter predict 8f2a81c1 'a gripping, funny film'",
                        "lorafleet adapter predict 2b7c90d4 'The cat sat. ||| A cat was sitting.'"],
    "report benchmark": ["lorafleet report benchmark --pick best --format md"],
    "report cost": ["lorafleet report cost --since 2026-11-01 --price cuda=2.5"],
    "report compare": ["lorafleet report compare --task sst2"],
    "report all": ["lorafleet report all --out ./reports"],
    "reconcile": ["lorafleet reconcile --every 30"],
    "quickstart": ["lorafleet quickstart"],
    "cli-server start": ["lorafleet cli-server start && for t in sst2 mrpc rte; do lorafleet job submit "
                         "--tenant acme --task $t; done"],
    "cli-server stop": ["lorafleet cli-server stop"],
    "cli-server status": ["lorafleet cli-server status --json"],
    "db upgrade": ["LORAFLEET_DATABASE_URL=postgresql://lorafleet@db/lorafleet lorafleet db upgrade"],
    "db current": ["lorafleet db current --json"],
}


def attach(command: Any, path: tuple[str, ...]) -> None:
    """Set the epilog of `command` (named by `path`, e.g. ("job", "submit")) and of every command
    of a group below it, where it has none and no example in its help. A lazy group's commands
    get theirs when they are loaded (`cli/lazy.py`)."""
    import click

    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            attach(sub, (*path, name))
        return
    lines = EXAMPLES.get(" ".join(path))
    if lines and not command.epilog and "Example" not in (command.help or ""):
        word = "Examples" if len(lines) > 1 else "Example"
        command.epilog = "\b\n" + f"{word}:\n" + "\n".join(f"  {line}" for line in lines)
