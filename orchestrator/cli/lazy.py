"""A Click group that imports a subcommand's module only when that subcommand is used.

Click's documented "LazyGroup" pattern: the group knows each subcommand by name and the import
path of its command object (`"orchestrator.cli.tenant:tenant"`) and imports that one module when
the command is looked up. A command line runs a single command, so `lorafleet job submit`
imports the job commands and none of the others (tenant, adapter, report, worker, ...), whose
modules and their helpers were a measurable part of a submit's start-up (bench/RESULTS.md, "The
submit path"). `--help` looks every command up for its one-line summary, so it imports them all,
as before.

A command gets its example epilog (`cli/examples.py`) when it is loaded: the table is keyed by
the command's path, which the group knows from the context it is looked up in.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import click


class LazyGroup(click.Group):
    """A group whose `lazy` subcommands ({name: "module:attribute"}) are imported on first use."""

    def __init__(self, *args: Any, lazy: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy:
            self.add_command(self._load(ctx, cmd_name), cmd_name)
        return super().get_command(ctx, cmd_name)

    def _load(self, ctx: click.Context, cmd_name: str) -> click.Command:
        from orchestrator.cli.examples import attach

        module, _, attribute = self.lazy[cmd_name].partition(":")
        command = getattr(importlib.import_module(module), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{self.lazy[cmd_name]} is not a Click command")
        attach(command, (*_path(ctx), cmd_name))
        return command


def _path(ctx: click.Context) -> tuple[str, ...]:
    """The names of the groups from the root down to `ctx`'s command (the root's own name left
    out: it is `lorafleet`, `main.py` or `cli` depending on how the CLI was started)."""
    names = []
    while ctx.parent is not None:
        names.append(ctx.info_name or "")
        ctx = ctx.parent
    return tuple(reversed(names))
