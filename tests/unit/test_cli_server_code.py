"""The CLI server notices that its code changed on disk and stops instead of serving stale code;
its loop drops a request not whole by its deadline and a connection from another user."""

from __future__ import annotations

import contextlib
import os
import select
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from orchestrator.cli.entry import PROTOCOL, code_identity, receive_message, send_message
from orchestrator.cli.forkserver import CodeWatch, Server, answer


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


def ask(path: str, op: str) -> dict | None:
    """The server's reply to a control message, sent with no check of the socket (unlike `answer`)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(path)
        send_message(sock, {"protocol": PROTOCOL, "code": code_identity(), "op": op})
        return receive_message(sock)


@contextlib.contextmanager
def serving(server: Server) -> Iterator[None]:
    """`server`'s loop, in a thread, on a socket at its path (no preload, nothing forked)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(server.path)
        os.chmod(server.path, 0o777)
        listener.listen(8)
        server.listener = listener
        loop = threading.Thread(target=server._loop)
        loop.start()
        try:
            yield
        finally:
            ask(server.path, "stop")
            loop.join(5)
    assert not loop.is_alive()


def test_a_request_not_whole_by_its_deadline_is_dropped_while_others_are_served(tmp_path: Path):
    server = Server(str(tmp_path / "cli.sock"), idle_timeout=0, request_timeout=0.5)
    with serving(server), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as slow:
        started = time.monotonic()
        slow.connect(server.path)
        slow.send(struct.pack("!I", 4096))  # a header, then never the whole body
        assert answer(server.path, {"op": "ping"})["pid"] == os.getpid()  # served meanwhile
        # A byte every 0.1 s does not stretch the deadline, which counts from the connection.
        while time.monotonic() - started < 5:
            try:
                slow.send(b" ")
            except OSError:
                break
            if select.select([slow], [], [], 0.1)[0]:
                assert slow.recv(1) == b""
                break
        dropped_after = time.monotonic() - started
    assert 0.5 <= dropped_after < 4, dropped_after


def test_a_connection_from_another_user_is_closed_unanswered():
    # A folder others may reach (pytest's tmp_path is not): the peer check alone turns them away.
    with tempfile.TemporaryDirectory() as folder:
        os.chmod(folder, 0o755)
        served_to_nobody = _ping_as(65534, Server(str(Path(folder) / "cli.sock"), idle_timeout=0))
    assert served_to_nobody == "None"  # closed without a reply


def _ping_as(uid: int, server: Server) -> str:
    """What a process of `uid` gets back for a ping (repr), while the owner is served."""
    ping = {"protocol": PROTOCOL, "code": code_identity(), "op": "ping"}
    with serving(server):
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.setgid(uid)
                os.setuid(uid)
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.settimeout(5)
                    sock.connect(server.path)
                    try:
                        send_message(sock, ping)
                        reply = receive_message(sock)
                    except (BrokenPipeError, ConnectionResetError):  # closed, our request unread
                        reply = None
                    os.write(write_end, repr(reply).encode())
            except BaseException as exc:
                os.write(write_end, repr(exc).encode())
            finally:
                os._exit(0)
        os.close(write_end)
        reply = os.read(read_end, 1000).decode()
        os.waitpid(pid, 0)
        os.close(read_end)
        assert ask(server.path, "ping")["pid"] == os.getpid()  # the owner is still served
    return reply
