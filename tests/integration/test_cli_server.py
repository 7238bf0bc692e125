"""`lorafleet cli-server`: the real console script handing command lines to a real resident server
process, against an embedded registry; every result compared with the same command run in its
own process."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.cli import entry
from tests.integration.workers import ROOT, wait_for, worker_env

pytestmark = pytest.mark.integration

LORAFLEET = str(Path(sys.executable).with_name("lorafleet"))
JOB = ("--tenant", "acme", "--task", "sst2", "--rank", "4", "--base-model", "tiny-bert", "--max-steps", "3")


def run(env: dict[str, str], *args: str, local: bool = False, cwd: Path = ROOT, timeout: float = 120,
        **kwargs) -> subprocess.CompletedProcess:
    """`lorafleet ARGS` through the console script: served when a server runs, or with `local` in
    the script's own process (it is told a socket where no server listens)."""
    if local:
        env = {**env, entry.SOCKET_ENV: str(Path(env[entry.SOCKET_ENV]).with_name("none.sock"))}
    return subprocess.run([LORAFLEET, *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def spawn(env: dict[str, str], *args: str, local: bool = False, **kwargs) -> subprocess.Popen:
    if local:
        env = {**env, entry.SOCKET_ENV: str(Path(env[entry.SOCKET_ENV]).with_name("none.sock"))}
    return subprocess.Popen([LORAFLEET, *args], env=env, cwd=ROOT, **kwargs)


def served_count(env: dict[str, str]) -> int:
    status = run(env, "cli-server", "status", "--json")
    assert status.returncode == 0, status.stderr
    return json.loads(status.stdout)["served"]


def children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A running server (its own socket) and the environment of an embedded home to use it with."""
    tmp = tmp_path_factory.mktemp("cli-server")
    run_dir = tmp / "run"
    env = {**worker_env(tmp / "home"), entry.SOCKET_ENV: str(run_dir / "cli.sock")}
    started = run(env, "cli-server", "start", "--json")
    assert started.returncode == 0, started.stderr
    assert os.stat(run_dir).st_mode & 0o777 == 0o700  # the socket's folder and the socket are private
    assert os.stat(run_dir / "cli.sock").st_mode & 0o777 == 0o600
    env["SERVER_PID"] = str(json.loads(started.stdout)["pid"])
    assert run(env, "tenant", "create", "acme").returncode == 0
    yield env
    stopped = run(env, "cli-server", "stop")
    assert stopped.returncode == 0 and not (run_dir / "cli.sock").exists(), stopped.stderr


def test_a_served_command_does_what_its_own_process_does(server: dict[str, str], tmp_path: Path):
    before = served_count(server)
    submitted = run(server, "job", "submit", *JOB)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    assert served_count(server) == before + 1  # it ran in the server, not in the console script

    # Output and exit status are the same as in a process of its own, for success and failure.
    for args in (("job", "list", "--json"), ("job", "show", job_id, "--json"), ("job", "show", "no-such-job"),
                 ("job", "submit", *JOB[:-4], "--base-model", "no-such-model-xyz"), ("job", "frobnicate"),
                 ("tenant", "show", "acme", "--json")):
        served, local = run(server, *args), run(server, *args, local=True)
        assert (served.returncode, served.stdout, served.stderr) == \
            (local.returncode, local.stdout, local.stderr), args
    assert run(server, "job", "show", "no-such-job").returncode == 3
    refused = run(server, "job", "submit", *JOB[:-4], "--base-model", "no-such-model-xyz")
    assert refused.returncode == 1 and "no-such-model-xyz" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert json.loads(run(server, "job", "list", "--json").stdout)[0]["id"] == job_id  # nothing else queued

    # The caller's environment and folder, not the server's: another home is another registry, and
    # `config init` makes the home in the caller's folder.
    other = {**server, "LORAFLEET_HOME": str(tmp_path / "other-home")}
    assert run(other, "job", "list", "--json").stdout.strip() == "[]"
    made = run({k: v for k, v in server.items() if k != "LORAFLEET_HOME"}, "config", "init", cwd=tmp_path)
    assert made.returncode == 0 and (tmp_path / ".lorafleet").is_dir(), made.stderr


def test_the_callers_stdin_and_terminal(server: dict[str, str]):
    # A confirmation prompt reads the caller's stdin.
    asked = run(server, "adapter", "delete", "no-such-adapter", input="n\n")
    assert asked.returncode == 1 and "delete adapter no-such-adapter" in asked.stderr
    assert "Aborted" in asked.stderr

    # In a terminal the table is drawn for that terminal, byte for byte as in its own process.
    def on_a_terminal(local: bool) -> bytes:
        leader, follower = pty.openpty()
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 70, 0, 0))
        proc = spawn({**server, "TERM": "xterm-256color"}, "tenant", "list", local=local,
                     stdin=follower, stdout=follower, stderr=follower)
        os.close(follower)
        out = b""
        while True:
            ready, _, _ = select.select([leader], [], [], 30)
            try:
                chunk = os.read(leader, 65536) if ready else b""
            except OSError:  # the terminal closed with the process
                chunk = b""
            if not chunk:
                break
            out += chunk
        os.close(leader)
        assert proc.wait(30) == 0
        return out

    drawn = on_a_terminal(local=False)
    assert drawn == on_a_terminal(local=True) and b"acme" in drawn and b"\x1b[" in drawn  # styled, for a tty


def test_ctrl_c_and_a_vanished_caller_end_the_command(server: dict[str, str]):
    server_pid = int(server["SERVER_PID"])
    # `--wait` with no worker waits for ever: Ctrl-C (SIGINT to the caller) reaches the command,
    # which detaches with its own message and status, and its process is gone.
    waiting = spawn(server, "job", "submit", *JOB, "--wait", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    text=True)
    wait_for(lambda: children_of(server_pid), 30, "the served command's process")
    time.sleep(1.0)
    waiting.send_signal(signal.SIGINT)
    _, err = waiting.communicate(timeout=30)
    assert waiting.returncode == 130 and "detached: the job keeps running" in err, err
    wait_for(lambda: not children_of(server_pid), 10, "the served command's process to end")

    # A caller killed outright (no chance to forward anything) hangs its command up.
    killed = spawn(server, "job", "submit", *JOB, "--wait", stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    children = wait_for(lambda: children_of(server_pid), 30, "the served command's process")
    killed.kill()
    killed.wait(10)
    wait_for(lambda: not any(Path(f"/proc/{c}").exists() for c in children), 10,
             "the orphaned command to end")


def test_requests_it_must_not_serve(server: dict[str, str]):
    # Another checkout's or interpreter's client, or another protocol, is turned away (that
    # client then runs the command itself), and the server keeps serving.
    before = served_count(server)
    other_code = "/other/python\0/other/checkout"
    for message in ({"protocol": entry.PROTOCOL, "code": other_code, "argv": ["status"]},
                    {"protocol": entry.PROTOCOL + 1, "code": entry.code_identity(), "argv": ["status"]}):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(server[entry.SOCKET_ENV])
            entry.send_message(sock, message, [0, 1, 2])
            assert entry.receive_message(sock) == {"accepted": False}
    assert run(server, "tenant", "list").returncode == 0
    assert served_count(server) == before + 1  # only that one was run

    # Commands that own their process never go to the server.
    assert not entry.served(["worker"]) and not entry.served(["quickstart"]) and not entry.served(["--help"])
    assert entry.served(["job", "submit"])


def test_no_server_a_bad_folder_and_the_idle_timeout(tmp_path: Path):
    env = {**worker_env(tmp_path / "home"), entry.SOCKET_ENV: str(tmp_path / "run" / "cli.sock")}
    # No server: the console script runs the command itself.
    assert run(env, "tenant", "create", "acme").returncode == 0
    missing = run(env, "cli-server", "status")
    assert missing.returncode == 3 and "no CLI server" in missing.stderr

    # A socket folder others may enter is refused, with what it must be.
    (tmp_path / "open").mkdir(mode=0o755)
    os.chmod(tmp_path / "open", 0o755)
    refused = run({**env, entry.SOCKET_ENV: str(tmp_path / "open" / "cli.sock")}, "cli-server", "start")
    assert refused.returncode == 1 and "mode 700" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "open" / "cli.sock").exists()

    # Two starts at once make one server; an idle server stops by itself and removes its socket.
    starts = [spawn(env, "cli-server", "start", "--json", "--idle-timeout", "3", stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, text=True) for _ in range(2)]
    replies = [start.communicate(timeout=90) for start in starts]
    assert [start.returncode for start in starts] == [0, 0], replies
    assert len({json.loads(out)["pid"] for out, _ in replies}) == 1
    wait_for(lambda: not (tmp_path / "run" / "cli.sock").exists(), 20, "the idle server to stop")
    assert run(env, "cli-server", "status").returncode == 3


# --- hostile input: the sockets, the requests and the callers --------------------------------

NOBODY = 65534  # another local user


class Recorder:
    """A listener on the bound socket `sock`, in a forked child that counts the connections and
    bytes it receives until `stop()` (or a minute). With `uid` the child becomes that user before
    listen(), so the kernel records that uid as the listener's peer credentials."""

    def __init__(self, sock: socket.socket, uid: int | None = None):
        stop_r, self._stop_w = os.pipe()
        self._out_r, out_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            try:
                if uid is not None:
                    os.setgroups([])
                    os.setgid(uid)
                    os.setuid(uid)
                sock.listen(8)
                os.write(out_w, b"+")  # listening
                connections = received = 0
                while sock in select.select([sock, stop_r], [], [], 60)[0]:
                    conn, _ = sock.accept()
                    connections += 1
                    conn.settimeout(1)  # what a client sends follows its connect at once
                    with conn, contextlib.suppress(OSError):
                        while chunk := conn.recv(65536):
                            received += len(chunk)
                os.write(out_w, f"{connections} {received}".encode())
            finally:
                os._exit(0)
        os.close(stop_r)
        os.close(out_w)
        sock.close()
        assert os.read(self._out_r, 1) == b"+", "the recorder did not start listening"

    def stop(self) -> tuple[int, int]:
        """(connections, bytes) it received."""
        os.write(self._stop_w, b"x")  # not a close: later recorders' children hold copies of this end
        os.close(self._stop_w)
        connections, received = os.read(self._out_r, 100).split()
        os.close(self._out_r)
        os.waitpid(self.pid, 0)
        return int(connections), int(received)


def bound_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    return sock


def test_the_client_sends_nothing_to_a_socket_that_is_not_the_users(tmp_path: Path):
    # Four sockets a command line must not reach, each with a listener counting what it gets:
    # another user made the folder first, the folder is writable by all, the socket is another
    # user's, and (all else in order) the process listening runs as another user.
    cases: dict[str, tuple[Path, Recorder, str]] = {}
    for name, reason in (("their-folder", f"it is a folder of uid {NOBODY}"), ("open-folder", "mode 777"),
                         ("their-socket", f"a socket of uid {NOBODY}"),
                         ("their-process", f"the process listening on it runs as uid {NOBODY}")):
        folder = tmp_path / name
        folder.mkdir(mode=0o700)
        sock = bound_socket(folder / "cli.sock")
        if name == "their-folder":
            os.chown(folder, NOBODY, NOBODY)
        elif name == "open-folder":
            os.chmod(folder, 0o777)
        elif name == "their-socket":
            os.chown(folder / "cli.sock", NOBODY, NOBODY)
        cases[name] = (folder / "cli.sock", Recorder(sock, uid=NOBODY if name == "their-process" else None),
                       reason)
    assert os.stat(tmp_path / "their-folder").st_uid == NOBODY
    callers = {name: spawn({**worker_env(tmp_path / "home"), entry.SOCKET_ENV: str(path)}, "config", "show",
                           "--json", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for name, (path, _, _) in cases.items()}
    for name, caller in callers.items():
        out, err = caller.communicate(timeout=60)
        path, recorder, reason = cases[name]
        connections, received = recorder.stop()
        # The command ran in its own process, said why once, and sent nothing.
        assert caller.returncode == 0, (name, err)
        assert {"variable": "LORAFLEET_CLI_SOCKET", "value": str(path), "source": "env"} in json.loads(out)
        assert err.count("lorafleet: not using the CLI server socket") == 1 and reason in err, (name, err)
        assert "running the command in this process" in err and "Traceback" not in err
        assert received == 0, name
        assert connections == (1 if name == "their-process" else 0), name  # only the peer check connects


def test_start_replaces_nothing_at_the_socket_path_but_its_own_stale_socket(tmp_path: Path):
    folder = tmp_path / "run"
    folder.mkdir(mode=0o700)
    notes = folder / "notes.txt"
    notes.write_text("keep me\n")
    env = worker_env(tmp_path / "home")
    refused = run({**env, entry.SOCKET_ENV: str(notes)}, "cli-server", "start")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert f"{notes} is a regular file, which the server does not replace" in refused.stderr, refused.stderr
    assert notes.read_text() == "keep me\n" and sorted(p.name for p in folder.iterdir()) == ["notes.txt"]

    # A socket of this user that some other program listens on is not taken over either.
    live = folder / "live.sock"
    recorder = Recorder(bound_socket(live))
    try:
        busy = run({**env, entry.SOCKET_ENV: str(live)}, "cli-server", "start")
    finally:
        recorder.stop()
    assert busy.returncode == 1 and f"a process listens on {live}" in busy.stderr, busy.stderr
    assert live.exists()

    # A stale socket of its own (a server that died) is replaced.
    stale = folder / "stale.sock"
    bound_socket(stale).close()
    started = run({**env, entry.SOCKET_ENV: str(stale)}, "cli-server", "start", "--idle-timeout", "30")
    try:
        assert started.returncode == 0, started.stderr
        assert run({**env, entry.SOCKET_ENV: str(stale)}, "cli-server", "status").returncode == 0
    finally:
        run({**env, entry.SOCKET_ENV: str(stale)}, "cli-server", "stop")


def raw_request(path: str, body: bytes, header: bytes | None = None) -> dict | None:
    """The server's reply to one hand-made request (None: it closed the connection)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(path)
        socket.send_fds(sock, [struct.pack("!I", len(body)) if header is None else header], [0, 1, 2])
        with contextlib.suppress(OSError):
            sock.sendall(body)
        try:
            return entry.receive_message(sock)
        except OSError:
            return None


def test_hostile_requests_are_refused_and_the_server_keeps_serving(server: dict[str, str]):
    path, before = server[entry.SOCKET_ENV], served_count(server)
    ours = {"protocol": entry.PROTOCOL, "code": entry.code_identity()}
    refused = {
        "must be a JSON object, not a str": b'"tenant list"',
        "must be a JSON object, not a list": b'["tenant", "list"]',
        "nests deeper than": b"[" * 100_000 + b"]" * 100_000,
        "is not JSON": b'{"protocol": 1, ',
        "is not UTF-8": b"\xff\xfe{}",
        "not a number JSON allows": b'{"protocol": NaN}',
        "argv must be a list of strings": json.dumps({**ours, "argv": "tenant list", "cwd": "/", "env": {},
                                                      "umask": 18}).encode(),
        "env must map variable names to strings": json.dumps({**ours, "argv": ["status"], "cwd": "/",
                                                              "env": {"A": ["x"]}, "umask": 18}).encode(),
    }
    for problem, body in refused.items():
        reply = raw_request(path, body)
        assert reply is not None and reply["accepted"] is False, problem
        notice = reply["notice"]
        assert notice.startswith("the CLI server refused a request") and problem in notice, notice
    # Over the size limit: the connection is closed unread.
    assert raw_request(path, b"", header=struct.pack("!I", entry.MAX_MESSAGE_BYTES + 1)) is None

    assert Path(f"/proc/{server['SERVER_PID']}").exists()
    listed = run(server, "tenant", "list", "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout)[0]["slug"] == "acme", listed.stderr
    assert served_count(server) == before + 1  # that one was served; none of the refused ones was


def test_a_client_trickling_its_request_does_not_hold_up_other_commands(server: dict[str, str]):
    from orchestrator.cli.forkserver import REQUEST_TIMEOUT

    before = served_count(server)
    done = threading.Event()
    sends: list[bool] = []

    def trickle(sock: socket.socket) -> None:
        # A header announcing 4 kB, then a byte a second: never a whole request.
        sock.send(struct.pack("!I", 4096))
        while not done.wait(1.0):
            try:
                sock.send(b" ")
                sends.append(True)
            except OSError:
                sends.append(False)
                return

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as slow:
        slow.connect(server[entry.SOCKET_ENV])
        trickler = threading.Thread(target=trickle, args=(slow,))
        trickler.start()
        time.sleep(0.5)  # the server has accepted it and waits for the rest
        started = time.monotonic()
        try:
            listed = run(server, "tenant", "list", "--json", timeout=3 * REQUEST_TIMEOUT)
        finally:
            took = time.monotonic() - started
            done.set()
            trickler.join()
    assert listed.returncode == 0 and "acme" in listed.stdout, listed.stderr
    # Served, well within the slow caller's deadline: it did not wait for the server to drop that one.
    assert took < REQUEST_TIMEOUT and False not in sends, (took, sends)
    assert served_count(server) == before + 1
