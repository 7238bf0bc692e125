"""The `lorafleet` console script: hand the command line to a running CLI server, else run it here.

A fresh Python process pays for importing Click, SQLAlchemy and pydantic before it does anything
(about 1 s of a 1.4 s `job submit` on a slow 2-core machine, bench/RESULTS.md "The submit path"),
so a script that submits jobs one by one spends its time importing. `lorafleet cli-server start`
keeps one process with those modules loaded (`cli/server.py`); this client, which imports only
the standard library's socket layer, passes it the command line, the environment, the current
folder and its own stdin/stdout/stderr (as file descriptors, so output, prompts, colours and the
terminal's size are the caller's own). The server forks a child per command; the child runs the
command exactly as this process would have and sends back its exit status.

With no server (the usual case), a server started from other code, or a command that owns its
process (`worker`, `quickstart`, `cli-server` itself), the command runs here as it always did.
Mercurial's `chg` works the same way.

This module must stay free of third-party imports: it runs before anything else, on every call.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import sys
import zlib

# Bumped when the messages below change: a server speaking another version is not used.
PROTOCOL = 1
SOCKET_ENV = "LORAFLEET_CLI_SOCKET"
# Commands that own their process (a worker's pid is recorded and signalled; the quickstart starts
# workers) or manage the server: always run in the caller's process.
LOCAL_COMMANDS = frozenset({"worker", "quickstart", "cli-server"})
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_HEADER = struct.Struct("!I")
MAX_MESSAGE_BYTES = 16 << 20


def code_identity() -> str:
    """What a server must have been started from to run our commands: this interpreter and this
    checkout of the code (two virtual environments or checkouts never share a server)."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return f"{os.path.realpath(sys.executable)}\0{package}"


def socket_path(env: dict[str, str] | os._Environ = os.environ) -> str:
    """$LORAFLEET_CLI_SOCKET, else one socket per user and per code identity in the user's runtime
    folder ($XDG_RUNTIME_DIR, else $TMPDIR or /tmp, in a `lorafleet-<uid>` folder only the user
    may enter)."""
    if env.get(SOCKET_ENV):
        return os.path.abspath(env[SOCKET_ENV])
    base = env.get("XDG_RUNTIME_DIR") or env.get("TMPDIR") or "/tmp"
    digest = zlib.crc32(code_identity().encode()) & 0xFFFFFFFF
    return os.path.join(base, f"lorafleet-{os.getuid()}", f"cli-{digest:08x}.sock")


def send_message(sock: socket.socket, message: dict, fds: list[int] | None = None) -> None:
    body = json.dumps(message).encode()
    header = _HEADER.pack(len(body))
    if fds:
        socket.send_fds(sock, [header], fds)
    else:
        sock.sendall(header)
    sock.sendall(body)


def receive_message(sock: socket.socket, *, max_fds: int = 0) -> tuple[dict | None, list[int]]:
    """(message, file descriptors); (None, []) when the peer closed the connection first."""
    fds: list[int] = []
    if max_fds:
        header, fds, _, _ = socket.recv_fds(sock, _HEADER.size, max_fds)
    else:
        header = sock.recv(_HEADER.size)
    header += _receive_exactly(sock, _HEADER.size - len(header)) if header else b""
    if len(header) < _HEADER.size:
        return None, fds
    (size,) = _HEADER.unpack(header)
    if size > MAX_MESSAGE_BYTES:
        raise ValueError(f"a CLI server message of {size} bytes (at most {MAX_MESSAGE_BYTES})")
    body = _receive_exactly(sock, size)
    return (json.loads(body) if len(body) == size else None), fds


def _receive_exactly(sock: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left > 0:
        chunk = sock.recv(left)
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def served(argv: list[str]) -> bool:
    """Whether this command line may run in the server: a command (not `--help`/`--version` of the
    root, which need no imports anyway) that does not own its process."""
    return bool(argv) and not argv[0].startswith("-") and argv[0] not in LOCAL_COMMANDS


def request(argv: list[str]) -> dict:
    umask = os.umask(0)
    os.umask(umask)
    return {
        "protocol": PROTOCOL,
        "code": code_identity(),
        "argv0": sys.argv[0],
        "argv": argv,
        "cwd": os.getcwd(),
        "env": dict(os.environ),
        "umask": umask,
        "encoding": {name: [stream.encoding, stream.errors] for name, stream in
                     (("stdin", sys.stdin), ("stdout", sys.stdout), ("stderr", sys.stderr)) if stream},
    }


def run_in_server(argv: list[str]) -> int | None:
    """The command's exit status from a running server, or None when it must run here (no server,
    or a server that cannot run it: other code, another protocol, or code changed since it
    started). Signals this process receives while the command runs are passed on to it."""
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(socket_path())
    except OSError:
        return None
    with sock:
        try:
            send_message(sock, request(argv), [0, 1, 2])
            answer, _ = receive_message(sock)
        except (OSError, ValueError):
            return None
        if answer is None or not answer.get("accepted"):
            if answer and answer.get("notice"):
                print(f"lorafleet: {answer['notice']}", file=sys.stderr)
            return None
        return _wait_for_exit(sock)


def _wait_for_exit(sock: socket.socket) -> int:
    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(OSError):
            send_message(sock, {"signal": signum})

    for signum in FORWARDED_SIGNALS:
        signal.signal(signum, forward)
    try:  # a forwarded signal does not end the read: Python resumes it after the handler (PEP 475)
        answer, _ = receive_message(sock)
    except (OSError, ValueError):
        answer = None
    if answer is None or "exit" not in answer:
        print("lorafleet: the CLI server's process for this command ended without an exit status",
              file=sys.stderr)
        return 1
    return int(answer["exit"])


def main() -> None:
    argv = sys.argv[1:]
    status = run_in_server(argv) if served(argv) else None
    if status is not None:
        sys.exit(status)
    from orchestrator.cli.main import cli

    cli()
