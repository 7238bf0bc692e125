"""The CLI server notices that its code changed on disk and stops instead of serving stale code."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from orchestrator.cli.entry import PROTOCOL, code_identity, receive_message
from orchestrator.cli.server import CodeWatch, Server, answer


def test_a_server_whose_code_changed_turns_the_command_back_and_stops(tmp_path: Path):
    package = tmp_path / "package"
    package.mkdir()
    (package / "module.py").write_text("x = 1\n")
    server = Server(str(tmp_path / "cli.sock"), idle_timeout=0)
    server.watch = CodeWatch([package], [tmp_path])
    ours, theirs = socket.socketpair()
    ping = {"protocol": PROTOCOL, "code": code_identity(), "op": "ping"}

    assert server._dispatch(ours, ping, []) is True
    assert receive_message(theirs)["pid"] > 0

    for change in (lambda: (package / "module.py").write_text("x = 22\n"),  # an edit
                   lambda: (package / "new.py").write_text(""),  # a new module
                   lambda: (tmp_path / "installed").mkdir()):  # a package installed
        server.watch.seen = server.watch.snapshot()
        change()
        assert server._dispatch(ours, ping, []) is False  # the server stops ...
        reply = receive_message(theirs)
        assert reply["accepted"] is False and "cli-server start" in reply["notice"]  # ... the caller runs it


def test_a_stopping_server_counts_as_none_for_start_stop_and_status(tmp_path: Path):
    # `cli-server start|stop|status` ask through `answer`: a server that turns the request back
    # (its code changed) is no server, so `start` starts a fresh one and `stop` has nothing to stop.
    package = tmp_path / "package"
    package.mkdir()
    server = Server(str(tmp_path / "cli.sock"), idle_timeout=0)
    server.watch = CodeWatch([package], [])
    (package / "module.py").write_text("")  # changed since the watch began
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(server.path)
        listener.listen(1)
        server.listener = listener
        loop = threading.Thread(target=server._loop)
        loop.start()
        assert answer(server.path, {"op": "ping"}) is None
        loop.join(5)
    assert not loop.is_alive()  # the server stopped
