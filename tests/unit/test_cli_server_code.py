"""The CLI server notices that its code changed on disk and stops instead of serving stale code."""

from __future__ import annotations

import socket
from pathlib import Path

from orchestrator.cli.entry import PROTOCOL, code_identity, receive_message
from orchestrator.cli.server import CodeWatch, Server


def test_a_server_whose_code_changed_turns_the_command_back_and_stops(tmp_path: Path):
    package = tmp_path / "package"
    package.mkdir()
    (package / "module.py").write_text("x = 1\n")
    server = Server(str(tmp_path / "cli.sock"), idle_timeout=0)
    server.watch = CodeWatch([package], [tmp_path])
    ours, theirs = socket.socketpair()
    ping = {"protocol": PROTOCOL, "code": code_identity(), "op": "ping"}

    assert server._dispatch(ours, ping, []) is True
    assert receive_message(theirs)[0]["pid"] > 0

    for change in (lambda: (package / "module.py").write_text("x = 22\n"),  # an edit
                   lambda: (package / "new.py").write_text(""),  # a new module
                   lambda: (tmp_path / "installed").mkdir()):  # a package installed
        server.watch.seen = server.watch.snapshot()
        change()
        assert server._dispatch(ours, ping, []) is False  # the server stops ...
        reply = receive_message(theirs)[0]
        assert reply["accepted"] is False and "cli-server start" in reply["notice"]  # ... the caller runs it
