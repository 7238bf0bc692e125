"""The `lorafleet` console script: hand the command line to a running CLI server, else run it here.

A fresh Python process pays for importing Click, SQLAlchemy and pydantic before it does anything
(about 1 s of a 1.4 s `job submit` on a slow 2-core machine, bench/RESULTS.md "The submit path"),
so a script that submits jobs one by one spends its time importing. `lorafleet cli-server start`
keeps one process with those modules loaded (`cli/forkserver.py`); this client, which imports only
the standard library's socket layer, passes it the command line, the environment, the current
folder and its own stdin/stdout/stderr (as file descriptors, so output, prompts, colours and the
terminal's size are the caller's own). The server forks a child per command; the child runs the
command exactly as this process would have and sends back its exit status.

With no server (the usual case), a server started from other code, or a command that owns its
process (`worker`, `quickstart`, `cli-server` itself), the command runs here as it always did.
Mercurial's `chg` works the same way.

Nothing is sent before the socket is known to be this user's (`connect`): the default folder
lies under the shared temp folder, where another local user could have made it first and would
then receive every command line, the environment holding the registry's password, and the
caller's terminal. A socket that fails the checks is not used; the command runs here, with one
line on stderr saying why.

This module must stay free of third-party imports: it runs before anything else, on every call.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import stat
import struct
import sys
import zlib

# Bumped when the messages below change: a server speaking another version is not used.
PROTOCOL = 1
SOCKET_ENV = "LORAFLEET_CLI_SOCKET"
# Commands that own their process (a worker's pid is recorded and signalled; the quickstart starts
# workers; the API server is a long-lived process of its own) or manage the server: always run in
# the caller's process.
LOCAL_COMMANDS = frozenset({"worker", "quickstart", "cli-server", "api", "serve"})
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_HEADER = struct.Struct("!I")
HEADER_BYTES = _HEADER.size
MAX_MESSAGE_BYTES = 16 << 20
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class Untrusted(Exception):
    """A socket at the CLI server's path that this user must not talk to; the message says why."""


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


def message_size(header: bytes) -> int:
    """The body size a message header announces; ValueError when it is over MAX_MESSAGE_BYTES."""
    (size,) = _HEADER.unpack(header)
    if size > MAX_MESSAGE_BYTES:
        raise ValueError(f"a CLI server message of {size} bytes (at most {MAX_MESSAGE_BYTES})")
    return size


def receive_frame(sock: socket.socket, *, max_fds: int = 0) -> tuple[bytes | None, list[int]]:
    """(one message's body, file descriptors); (None, fds) when the peer closed the connection
    first. The body is not parsed: the server parses requests with its bounded parser."""
    fds: list[int] = []
    if max_fds:
        header, fds, _, _ = socket.recv_fds(sock, _HEADER.size, max_fds)
    else:
        header = sock.recv(_HEADER.size)
    header += _receive_exactly(sock, _HEADER.size - len(header)) if header else b""
    if len(header) < _HEADER.size:
        return None, fds
    size = message_size(header)
    body = _receive_exactly(sock, size)
    return (body if len(body) == size else None), fds


def receive_message(sock: socket.socket) -> dict | None:
    """The server's next reply; None when it closed the connection first (or sent no object).
    Only ever read from a server `connect` checked, which runs as this user."""
    body, _ = receive_frame(sock)
    message = json.loads(body) if body is not None else None
    return message if isinstance(message, dict) else None


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


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a connected Unix socket (for the client: the
    one that listens), as the kernel recorded it: it cannot be forged by the peer."""
    _, uid, _ = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    return uid


def _described(info: os.stat_result) -> str:
    mode = info.st_mode
    kind = ("a folder" if stat.S_ISDIR(mode) else "a socket" if stat.S_ISSOCK(mode) else
            "a symbolic link" if stat.S_ISLNK(mode) else "a regular file" if stat.S_ISREG(mode) else
            "a special file")
    return f"{kind} of uid {info.st_uid}, mode {stat.S_IMODE(mode):o}"


def connect(path: str, timeout: float | None = None) -> socket.socket | None:
    """A connection to the CLI server at `path`, once it is known to be this user's: its folder
    is a real folder owned by this user and closed to everyone else (mode 700), the socket is this
    user's, and the process listening on it runs as this user (its peer credentials).

    None when no server listens there (no socket, or a stale one). Untrusted, before a byte is
    sent, when any check fails: the caller then runs the command itself.
    """
    uid, folder = os.getuid(), os.path.dirname(path)
    try:
        sock_info = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None  # no server: the usual case
    except PermissionError:
        raise Untrusted(f"its folder {folder} is closed to this user (uid {uid})") from None
    folder_info = os.lstat(folder)
    if not stat.S_ISDIR(folder_info.st_mode) or folder_info.st_uid != uid or folder_info.st_mode & 0o077:
        raise Untrusted(f"its folder {folder} must be a folder of this user (uid {uid}) closed to others "
                        f"(mode 700); it is {_described(folder_info)}")
    if not stat.S_ISSOCK(sock_info.st_mode) or sock_info.st_uid != uid:
        raise Untrusted(f"it must be a socket of this user (uid {uid}); it is {_described(sock_info)}")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
        server_uid = peer_uid(sock)
    except OSError:
        sock.close()
        return None  # a stale socket: nobody listens
    except AttributeError:  # no socket.SO_PEERCRED: this system cannot say who listens
        sock.close()
        raise Untrusted("this system does not report who listens on a socket (SO_PEERCRED)") from None
    if server_uid != uid:
        sock.close()
        raise Untrusted(f"the process listening on it runs as uid {server_uid}, not as this user (uid {uid})")
    return sock


def run_in_server(argv: list[str]) -> int | None:
    """The command's exit status from a running server, or None when it must run here (no server,
    a socket that is not this user's, or a server that cannot run it: other code, another
    protocol, or code changed since it started). Signals this process receives while the command
    runs are passed on to it."""
    path = socket_path()
    try:
        sock = connect(path)
    except Untrusted as exc:
        print(f"lorafleet: not using the CLI server socket {path}: {exc}; running the command in this "
              "process", file=sys.stderr)
        return None
    if sock is None:
        return None
    with sock:
        try:
            send_message(sock, request(argv), [0, 1, 2])
            answer = receive_message(sock)
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
        answer = receive_message(sock)
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


if __name__ == "__main__":
    main()
