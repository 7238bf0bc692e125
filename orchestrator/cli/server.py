"""`lorafleet cli-server …`: one resident process with the CLI's modules loaded, forking a child
per command line that `cli/entry.py` hands it (see there for why and for the client's side).

The server process only imports: it opens no registry or broker connection and reads no setting,
so each child starts from what a fresh `lorafleet` process would have after its imports and then
takes the caller's environment, folder, umask and stdin/stdout/stderr. It serves the user who
started it only (the socket's folder is private and each caller's uid is checked), stops after
`--idle-timeout` seconds without a command, and stops at the first command after its code (the
project's modules or the installed packages) changed on disk: that command runs in the caller's
process instead, so nobody is served stale code.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import gc
import importlib
import io
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

import click

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
# A caller sends its request at once; one that does not is dropped rather than stall the others.
REQUEST_TIMEOUT = 5.0
# How long a new server waits for the lock of one that is stopping (its code changed, say).
LOCK_WAIT = 3.0
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


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


def _lock(file: io.TextIOWrapper, wait: float) -> bool:
    """Take `file`'s exclusive lock, trying for `wait` seconds (False: another process holds it)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
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


def answer(path: str, message: dict, timeout: float = 5.0) -> dict | None:
    """The server's reply to a control message (ping, stop), or None when no server that would run
    our commands listens there (none, one of other code, or one that stops as its code changed)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            entry.send_message(sock, {"protocol": entry.PROTOCOL, "code": entry.code_identity(), **message})
            reply, _ = entry.receive_message(sock)
    except (OSError, ValueError):
        return None
    return None if reply is None or reply.get("accepted") is False else reply


class Server:
    def __init__(self, path: str, idle_timeout: float):
        self.path, self.idle_timeout = path, idle_timeout
        self.started = time.time()
        self.served = 0
        self.watch: CodeWatch | None = None
        self.listener: socket.socket | None = None

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
        folder = Path(self.path).parent
        private_folder(folder)
        lock = open(self.path + ".lock", "w")  # noqa: SIM115 (held for the server's lifetime)
        if not _lock(lock, LOCK_WAIT):
            print(f"another CLI server holds {lock.name}: not starting a second one", flush=True)
            return
        self.preload()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
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

    def _loop(self) -> None:
        assert self.listener is not None
        listener, last = self.listener, time.monotonic()
        while True:
            if self.idle_timeout:
                left = self.idle_timeout - (time.monotonic() - last)
                if left <= 0:
                    print("idle: stopping", flush=True)
                    return
                listener.settimeout(left)
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            last = time.monotonic()
            conn.settimeout(REQUEST_TIMEOUT)
            if not self._handle(conn):
                return

    def _handle(self, conn: socket.socket) -> bool:
        """Answer one connection; False when the server must stop."""
        with conn:
            _, uid, _ = _PEERCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                         _PEERCRED.size))
            if uid != os.getuid():
                return True  # only the user who started the server; the folder's mode keeps others out too
            try:
                message, fds = entry.receive_message(conn, max_fds=3)
            except (OSError, ValueError):
                return True
            try:
                return self._dispatch(conn, message, fds)
            finally:
                for fd in fds:
                    os.close(fd)

    def _dispatch(self, conn: socket.socket, message: dict | None, fds: list[int]) -> bool:
        if not message:
            return True
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
        if "argv" not in message or len(fds) != 3:
            entry.send_message(conn, {"accepted": False})
            return True
        self.served += 1
        if os.fork() == 0:
            try:
                if self.listener is not None:
                    self.listener.close()
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
            message, _ = entry.receive_message(conn)
        except (OSError, ValueError):
            message = None
        if message is None:
            os.kill(os.getpid(), signal.SIGHUP)
            return
        if isinstance(message.get("signal"), int):
            os.kill(os.getpid(), message["signal"])


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
    running = answer(path, {"op": "ping"})
    if not running:
        _check_socket_path(path)
        private_folder(Path(path).parent)
        log = Path(path).with_suffix(".log")
        with open(log, "ab") as out:
            server = subprocess.Popen(
                [sys.executable, "-m", "orchestrator.cli.server", path, str(idle_timeout)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                cwd="/")
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


if __name__ == "__main__":  # how `start` runs it: python -m orchestrator.cli.server SOCKET IDLE_TIMEOUT
    Server(sys.argv[1], float(sys.argv[2])).serve()
