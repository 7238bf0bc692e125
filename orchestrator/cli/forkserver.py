"""The fork server behind `lorafleet cli-server …`: one resident process with the CLI's modules
loaded, forking a child per command line that `cli/entry.py` hands it (see there for why and for
the client's side).

The server process only imports: it opens no registry or broker connection and reads no setting,
so each child starts from what a fresh `lorafleet` process would have after its imports and then
takes the caller's environment, folder, umask and stdin/stdout/stderr. It serves the user who
started it only (the socket's folder is private and each caller's uid is checked), stops after
`--idle-timeout` seconds without a command, and stops at the first command after its code (the
project's modules or the installed packages) changed on disk: that command runs in the caller's
process instead, so nobody is served stale code.

Requests are read off the accept loop, each connection as its bytes arrive and against a deadline
from its start, and parsed with the one bounded JSON parser (`lora_engine.safe_json`): a client
that trickles bytes, or sends a request that is not an object, too large or too deep, gets a
refusal or a closed connection and never holds up another command or stops the server. The
server replaces nothing at its socket's path but a stale socket of its own.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import gc
import importlib
import io
import os
import selectors
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

import click

from lora_engine import safe_json
from orchestrator.cli import entry
from orchestrator.cli.helpers import EXIT_NOT_FOUND, CliError, emit, json_option, print_record, status

# What the commands a script repeats (submit, list, show, status, reports) import; anything else
# a command needs it imports in its child, as a fresh process would. Never torch or
# huggingface_hub: torch's threads do not survive a fork, and huggingface_hub reads HF_HUB_OFFLINE
# when it is imported, which must be the caller's.
PRELOAD = (
    "orchestrator.cli.main", "orchestrator.cli.job", "orchestrator.cli.job_view",
    "orchestrator.cli.job_results", "orchestrator.cli.tenant", "orchestrator.cli.dataset",
    "orchestrator.cli.adapter", "orchestrator.cli.report", "orchestrator.cli.status",
    "orchestrator.cli.config", "orchestrator.cli.db", "orchestrator.cli.live",
    "orchestrator.config", "orchestrator.dispatch", "orchestrator.registry.db",
    "orchestrator.registry.repositories", "orchestrator.services.jobs", "orchestrator.services.views",
    "orchestrator.services.datasets", "orchestrator.services.tenants", "orchestrator.services.quotas",
    "orchestrator.services.estimates", "orchestrator.reports", "lora_engine.spec",
    "lora_engine.budget", "lora_engine.data.custom", "lora_engine.model_ref",
    "sqlalchemy.dialects.sqlite", "sqlalchemy.dialects.postgresql", "kombu", "alembic.command",
)
DEFAULT_IDLE_TIMEOUT = 3600.0
START_TIMEOUT = 60.0
# A caller sends its whole request (command line and environment, a few kB) as soon as it is
# connected; a connection that has not within this many seconds from its start is hung or
# hostile and is dropped. Counted from the start, not per read: a byte every few seconds would
# otherwise hold a connection open for ever.
REQUEST_TIMEOUT = 5.0
# Connections read at once; more wait in the listen backlog until one is answered or dropped,
# so a flood of idle connections cannot exhaust the server's file descriptors.
MAX_PENDING = 32
# How long a new server waits for the lock of one that is stopping (its code changed, say).
LOCK_WAIT = 3.0


class CodeWatch:
    """The state on disk of the code this process runs: every module of the project and the
    folders packages are installed in (an install or upgrade changes their entries)."""

    def __init__(self, packages: list[Path], folders: list[Path]):
        self.packages, self.folders = packages, folders
        self.seen = self.snapshot()

    def snapshot(self) -> frozenset[tuple[str, int, int]]:
        entries = set()
        for package in self.packages:
            for folder, _, files in os.walk(package):
                entries.update(_stat(os.path.join(folder, f)) for f in files if f.endswith(".py"))
        entries.update(_stat(str(folder)) for folder in self.folders)
        return frozenset(entries)

    def changed(self) -> bool:
        return self.snapshot() != self.seen

    @classmethod
    def of_this_process(cls) -> CodeWatch:
        root = Path(entry.__file__).resolve().parents[2]
        packages = [root / name for name in ("orchestrator", "lora_engine", "worker")
                    if (root / name).is_dir()]
        folders = [Path(p) for p in sys.path if p and Path(p).is_dir() and "site-packages" in p]
        return cls(packages, folders)


def _lock(fd: int, wait: float) -> bool:
    """Take the exclusive lock of file `fd`, trying for `wait` seconds (False: another process holds it)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


def _stat(path: str) -> tuple[str, int, int]:
    try:
        info = os.stat(path)
    except OSError:
        return (path, -1, -1)
    return (path, info.st_mtime_ns, info.st_size)


def private_folder(folder: Path) -> None:
    """Create `folder` for the socket, or check it: a real folder, ours, closed to everyone else."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise CliError(f"the CLI server's folder {folder} must be a folder owned by this user with "
                       f"no access for others (mode 700); it is mode {stat.S_IMODE(info.st_mode):o}, "
                       f"owner uid {info.st_uid}. Remove it or set {entry.SOCKET_ENV}")


def _open_private(path: str, flags: int) -> int:
    """Open (creating, mode 600) a file of the server's beside its socket, never through a link."""
    return os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)


def foreign_file(path: str) -> str | None:
    """Why what sits at the socket's `path` is not the server's to replace, or None: nothing is
    there, or a socket of this user (which `Server.serve` replaces only if nobody listens on it).
    Whatever else `LORAFLEET_CLI_SOCKET` names (a file, a folder, another user's socket) is the
    user's, and a server never deletes it."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISSOCK(info.st_mode) and info.st_uid == os.getuid():
        return None
    kind = "a folder" if stat.S_ISDIR(info.st_mode) else "a regular file" if stat.S_ISREG(info.st_mode) \
        else "another user's socket" if stat.S_ISSOCK(info.st_mode) else "a special file or link"
    return (f"the CLI server's socket path {path} is {kind}, which the server does not replace (only a "
            f"stale socket of its own): remove it or set {entry.SOCKET_ENV} to another path")


def answer(path: str, message: dict, timeout: float = 5.0) -> dict | None:
    """The server's reply to a control message (ping, stop), or None when no server that would run
    our commands listens there (none, one of other code, or one that stops as its code changed).
    CliError when the socket is not this user's (`entry.connect`): nothing is sent to it."""
    try:
        sock = entry.connect(path, timeout)
    except entry.Untrusted as exc:
        raise CliError(f"not talking to the CLI server socket {path}: {exc}") from None
    if sock is None:
        return None
    try:
        with sock:
            entry.send_message(sock, {"protocol": entry.PROTOCOL, "code": entry.code_identity(), **message})
            reply = entry.receive_message(sock)
    except (OSError, ValueError):
        return None
    return None if reply is None or reply.get("accepted") is False else reply


def parse_request(body: bytes) -> dict:
    """A request's body as an object; safe_json.DocumentError naming what is wrong otherwise."""
    message = safe_json.loads(body, what="a CLI server request")
    if not isinstance(message, dict):
        kind = type(message).__name__
        raise safe_json.DocumentError(f"a CLI server request must be a JSON object, not a {kind}")
    return message


def command_problem(message: dict) -> str | None:
    """What is wrong with a command request's fields (None: a child can take them as they are)."""
    def strings(value: object) -> bool:
        return isinstance(value, str) and "\0" not in value

    env, encoding, umask = message.get("env"), message.get("encoding", {}), message.get("umask")
    if not isinstance(message.get("argv"), list) or not all(strings(a) for a in message["argv"]):
        return "argv must be a list of strings"
    if not strings(message.get("cwd")) or not strings(message.get("argv0", "lorafleet")):
        return "cwd and argv0 must be strings"
    if not isinstance(env, dict) or not all(
            strings(name) and name and "=" not in name and strings(value) for name, value in env.items()):
        return "env must map variable names to strings"
    if type(umask) is not int or not 0 <= umask <= 0o777:
        return "umask must be a number 0..0o777"
    if not isinstance(encoding, dict) or not all(
            isinstance(pair, list) and len(pair) == 2 and all(p is None or strings(p) for p in pair)
            for pair in encoding.values()):
        return "encoding must map stream names to [encoding, errors]"
    return None


def _refuse(conn: socket.socket, problem: str) -> None:
    """Turn a request away, saying why (the caller's client prints it and runs the command itself)."""
    entry.send_message(conn, {"accepted": False, "notice": f"the CLI server refused a request: {problem}"})


class PendingRequest:
    """One connection's request, read as its bytes arrive (the socket is non-blocking): a length
    header (with which the caller's file descriptors arrive), then the body."""

    def __init__(self, conn: socket.socket, deadline: float):
        self.conn, self.deadline = conn, deadline
        self.data = bytearray()
        self.fds: list[int] = []
        self.size: int | None = None
        self.closed = False

    def read(self) -> bool:
        """Take what has arrived; True once the request is whole or never will be (the peer
        closed, or it announced more than MAX_MESSAGE_BYTES: ValueError)."""
        wanted = entry.HEADER_BYTES if self.size is None else entry.HEADER_BYTES + self.size
        chunk, fds, _, _ = socket.recv_fds(self.conn, min(wanted - len(self.data), 1 << 16), 3)
        self.fds += fds
        if not chunk:
            self.closed = True
            return True
        self.data += chunk
        if self.size is None and len(self.data) >= entry.HEADER_BYTES:
            self.size = entry.message_size(bytes(self.data[:entry.HEADER_BYTES]))
        return self.size is not None and len(self.data) == entry.HEADER_BYTES + self.size

    def body(self) -> bytes | None:
        return None if self.closed or self.size is None else bytes(self.data[entry.HEADER_BYTES:])

    def close(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds = []
        self.conn.close()


class Server:
    def __init__(self, path: str, idle_timeout: float, request_timeout: float = REQUEST_TIMEOUT):
        self.path, self.idle_timeout, self.request_timeout = path, idle_timeout, request_timeout
        self.started = time.time()
        self.served = 0
        self.watch: CodeWatch | None = None
        self.listener: socket.socket | None = None
        self.selector: selectors.BaseSelector | None = None
        self.pending: dict[socket.socket, PendingRequest] = {}  # connections whose request is being read
        self.lock: int | None = None

    def preload(self) -> None:
        for module in PRELOAD:
            importlib.import_module(module)
        unsafe = sorted(m for m in ("torch", "huggingface_hub", "transformers") if m in sys.modules)
        if unsafe or threading.active_count() > 1:
            raise RuntimeError(f"the CLI server's preload started threads or imported {unsafe}: "
                               "a forked child would inherit them")
        from sqlalchemy.orm import configure_mappers

        configure_mappers()  # the registry's mapper set-up, done once here instead of per command
        self.watch = CodeWatch.of_this_process()
        gc.collect()
        gc.freeze()  # children neither rescan nor copy these objects (copy-on-write pages stay shared)

    def serve(self) -> None:
        private_folder(Path(self.path).parent)
        self.lock = lock = _open_private(self.path + ".lock", os.O_RDWR)  # held for the server's lifetime
        if not _lock(lock, LOCK_WAIT):
            print(f"another CLI server holds {self.path}.lock: not starting a second one", flush=True)
            return
        self._clear_stale_socket()
        self.preload()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        os.chmod(self.path, 0o600)
        self.listener.listen(64)
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        print(f"lorafleet CLI server {os.getpid()} listening on {self.path}", flush=True)
        ours = os.stat(self.path).st_ino
        try:
            self._loop()
        finally:
            self.listener.close()
            with contextlib.suppress(FileNotFoundError):
                if os.stat(self.path).st_ino == ours:  # not a socket a newer server bound since
                    os.unlink(self.path)

    def _clear_stale_socket(self) -> None:
        """Remove the socket a dead server left at our path; exit naming the problem when the
        path holds anything else, or a socket some process still listens on. Run under the lock,
        so that process is no server of this path."""
        problem = foreign_file(self.path)
        if problem is None and os.path.lexists(self.path):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                try:
                    probe.connect(self.path)
                    problem = (f"a process listens on {self.path}, and it is no CLI server of this "
                               f"checkout: stop it, or set {entry.SOCKET_ENV} to another path")
                except ConnectionRefusedError:
                    os.unlink(self.path)
        if problem:
            print(problem, flush=True)
            sys.exit(1)

    def _loop(self) -> None:
        """Accept connections and read their requests side by side, each against its deadline,
        until idle or told to stop."""
        assert self.listener is not None
        listener, last, listening = self.listener, time.monotonic(), False
        listener.setblocking(False)
        self.selector = selectors.DefaultSelector()
        try:
            while True:
                now = time.monotonic()
                for request in [r for r in self.pending.values() if r.deadline <= now]:
                    self._drop(request)  # too slow: hung or hostile
                if listening != (len(self.pending) < MAX_PENDING):
                    listening = not listening
                    if listening:
                        self.selector.register(listener, selectors.EVENT_READ)
                    else:
                        self.selector.unregister(listener)
                waits = [r.deadline - now for r in self.pending.values()]
                if self.idle_timeout:
                    left = self.idle_timeout - (now - last)
                    if left <= 0:
                        print("idle: stopping", flush=True)
                        return
                    waits.append(left)
                for key, _ in self.selector.select(min(waits) if waits else None):
                    if key.fileobj is listener:
                        last = time.monotonic()
                        self._accept()
                    elif (request := self._read(key.fileobj)) is not None and not self._answer(request):
                        return
        finally:
            for request in list(self.pending.values()):
                self._drop(request)
            self.selector.close()

    def _accept(self) -> None:
        """Take the next connection, if it comes from the user who started the server."""
        assert self.listener is not None and self.selector is not None
        try:
            conn, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        if entry.peer_uid(conn) != os.getuid():
            conn.close()  # only the user who started the server; the folder's mode keeps others out too
            return
        conn.setblocking(False)
        self.pending[conn] = PendingRequest(conn, time.monotonic() + self.request_timeout)
        self.selector.register(conn, selectors.EVENT_READ)

    def _read(self, conn: socket.socket) -> PendingRequest | None:
        """Read what arrived on `conn`; its request, no longer pending, once it is whole (or never
        will be)."""
        assert self.selector is not None
        request = self.pending[conn]
        try:
            whole = request.read()
        except (OSError, ValueError):
            whole, request.closed = True, True
        if not whole:
            return None
        self.selector.unregister(conn)
        del self.pending[conn]
        return request

    def _drop(self, request: PendingRequest) -> None:
        assert self.selector is not None
        self.selector.unregister(request.conn)
        del self.pending[request.conn]
        request.close()

    def _close_inherited(self) -> None:
        """In a forked child: close the server's sockets and lock (a long command must not keep a
        new server from starting after this one stopped) and the other callers' connections and
        terminals, which the command must neither hold open nor be able to touch."""
        for request in self.pending.values():
            request.close()
        if self.lock is not None:
            os.close(self.lock)
        if self.selector is not None:
            self.selector.close()
        if self.listener is not None:
            self.listener.close()

    def _answer(self, request: PendingRequest) -> bool:
        """Answer one whole request (or refuse it) and close the connection; False when the
        server must stop."""
        conn = request.conn
        try:
            conn.settimeout(self.request_timeout)  # a reply is small: a caller not reading it is dropped
            body = request.body()
            if body is None:
                return True
            try:
                message = parse_request(body)
            except safe_json.DocumentError as exc:
                _refuse(conn, str(exc))
                return True
            return self._dispatch(conn, message, request.fds)
        except OSError:  # the caller went away before its reply
            return True
        finally:
            request.close()

    def _dispatch(self, conn: socket.socket, message: dict, fds: list[int]) -> bool:
        if message.get("protocol") != entry.PROTOCOL or message.get("code") != entry.code_identity():
            entry.send_message(conn, {"accepted": False})
            return True
        if self.watch is not None and self.watch.changed():
            entry.send_message(conn, {"accepted": False, "notice": "the CLI server was started before "
                                      "the code changed and has stopped; `lorafleet cli-server start` "
                                      "starts it again"})
            print("code changed on disk: stopping", flush=True)
            return False
        if message.get("op") == "ping":
            entry.send_message(conn, self.describe())
            return True
        if message.get("op") == "stop":
            entry.send_message(conn, {"stopping": True, "pid": os.getpid()})
            print("stop requested", flush=True)
            return False
        problem = command_problem(message) if len(fds) == 3 else "a command comes with 3 file descriptors"
        if problem:
            _refuse(conn, problem)
            return True
        self.served += 1
        if os.fork() == 0:
            try:
                self._close_inherited()
                _run_child(conn, message, fds)
            finally:
                os._exit(70)  # not reached: _run_child exits with the command's status
        return True

    def describe(self) -> dict:
        started = datetime.fromtimestamp(self.started, UTC).isoformat(timespec="seconds")
        return {"pid": os.getpid(), "socket": self.path, "started": started,
                "uptime_s": round(time.time() - self.started, 1), "served": self.served,
                "idle_timeout_s": self.idle_timeout, "python": sys.executable,
                "preloaded_modules": len(sys.modules)}


def _run_child(conn: socket.socket, message: dict, fds: list[int]) -> None:
    """In the forked child: become the caller's process (streams, folder, environment, umask), run
    the command line through the CLI, send its exit status and exit with it."""
    conn.settimeout(None)
    for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    for fd in fds:
        if fd > 2:
            os.close(fd)
    encodings = message.get("encoding", {})
    sys.stdin, sys.stdout, sys.stderr = (_stream(0, "r", encodings.get("stdin")),
                                         _stream(1, "w", encodings.get("stdout")),
                                         _stream(2, "w", encodings.get("stderr")))
    os.chdir(message["cwd"])
    os.environ.clear()
    os.environ.update(message["env"])
    time.tzset()
    os.umask(int(message["umask"]))
    sys.argv = [message.get("argv0", "lorafleet"), *message["argv"]]
    entry.send_message(conn, {"accepted": True, "pid": os.getpid()})
    threading.Thread(target=_relay_signals, args=(conn,), daemon=True).start()
    code = _run_command(message["argv"])
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    with contextlib.suppress(OSError):
        entry.send_message(conn, {"exit": code})
    os._exit(code)


def _run_command(argv: list[str]) -> int:
    from orchestrator.cli.main import cli

    try:
        cli.main(args=argv, prog_name="lorafleet")
        code: object = 0
    except SystemExit as exc:
        code = exc.code
    except KeyboardInterrupt:
        code = 130
    except BaseException:  # what the interpreter would print for an uncaught error, and its status
        traceback.print_exc()
        code = 1
    with contextlib.suppress(Exception):
        atexit._run_exitfuncs()
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _relay_signals(conn: socket.socket) -> None:
    """Deliver the signals the caller forwards; the caller gone (Ctrl-C in its terminal killed it,
    or its connection dropped) is a hang-up, as it would be for a terminal's own process."""
    while True:
        try:
            body, _ = entry.receive_frame(conn)
        except (OSError, ValueError):
            body = None
        if body is None:
            os.kill(os.getpid(), signal.SIGHUP)
            return
        try:
            signum = parse_request(body).get("signal")
        except safe_json.DocumentError:
            continue
        if type(signum) is int and signum in entry.FORWARDED_SIGNALS:
            os.kill(os.getpid(), signum)


def _stream(fd: int, mode: str, encoding: list[str] | None) -> io.TextIOWrapper:
    """The text stream Python would have made for `fd` (stderr line-buffered, like Python's own)."""
    name, errors = encoding or (None, None)
    return io.TextIOWrapper(open(fd, mode + "b", closefd=False), encoding=name, errors=errors,
                            line_buffering=mode == "w" and (fd == 2 or os.isatty(fd)))


# --- the commands ---------------------------------------------------------------------------

@click.group("cli-server")
def cli_server() -> None:
    """A resident process that runs CLI commands without Python's start-up cost.

    \b
    Scripts that call `lorafleet` many times (one `job submit` per job) spend most of each call
    importing; with the server running, `lorafleet` hands each command line to it. Everything
    else is unchanged: the caller's environment, folder and terminal, exit status included.
    Commands that own their process (`worker`, `quickstart`) always run in the caller's.
    """


@cli_server.command("start")
@click.option("--idle-timeout", type=click.FloatRange(min=0), default=DEFAULT_IDLE_TIMEOUT, show_default=True,
              help="Stop after this many seconds without a command (0: never).")
@json_option
def start(idle_timeout: float, as_json: bool) -> None:
    """Start the server in the background (if it is not running) and wait until it answers."""
    path = entry.socket_path()
    _check_socket_path(path)
    private_folder(Path(path).parent)
    if problem := foreign_file(path):
        raise CliError(problem)
    running = answer(path, {"op": "ping"})
    if not running:
        log = Path(path + ".log")
        out = _open_private(str(log), os.O_WRONLY | os.O_APPEND)
        try:
            server = subprocess.Popen(
                [sys.executable, "-m", "orchestrator.cli.forkserver", path, str(idle_timeout)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                cwd="/")
        finally:
            os.close(out)
        deadline = time.monotonic() + START_TIMEOUT
        # Status 0 before answering: a server started at the same moment holds the lock; wait for it.
        while not running and time.monotonic() < deadline and server.poll() in (None, 0):
            time.sleep(0.05)
            running = answer(path, {"op": "ping"})
        if not running:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-5:])
            ended = f"exited with status {server.returncode}" if server.poll() else \
                f"did not answer within {START_TIMEOUT:.0f} s"
            raise CliError(f"the CLI server on {path} {ended}; the end of its log {log}:\n{tail}")
    else:
        status(f"already running (pid {running['pid']})")
    emit(running, as_json, print_record)


@cli_server.command("stop")
def stop() -> None:
    """Stop the server (commands then run in their own processes again)."""
    path = entry.socket_path()
    reply = answer(path, {"op": "stop"})
    if not reply:
        status(f"no CLI server on {path}")
        return
    deadline = time.monotonic() + 10
    while os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.02)
    status(f"stopped the CLI server (pid {reply['pid']})")


@cli_server.command("status")
@json_option
def server_status(as_json: bool) -> None:
    """Whether a server runs for this checkout, and what it has served (exit 3 when none)."""
    path = entry.socket_path()
    reply = answer(path, {"op": "ping"})
    if not reply:
        raise CliError(f"no CLI server on {path} (`lorafleet cli-server start`)", EXIT_NOT_FOUND)
    emit(reply, as_json, print_record)


def _check_socket_path(path: str) -> None:
    if len(os.fsencode(path)) > 100:  # sun_path holds 108 bytes
        raise CliError(f"the CLI server's socket path {path} is too long ({len(path)} characters, at most "
                       f"100); set {entry.SOCKET_ENV} to a shorter one")


if __name__ == "__main__":  # how `start` runs it: python -m orchestrator.cli.forkserver SOCKET IDLE_TIMEOUT
    Server(sys.argv[1], float(sys.argv[2])).serve()
