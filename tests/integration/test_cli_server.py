"""`lorafleet cli-server`: the real console script handing command lines to a real resident server
process, against an embedded registry; every result compared with the same command run in its
own process."""

from __future__ import annotations

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
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.cli import entry
from tests.integration.workers import ROOT, wait_for, worker_env

pytestmark = pytest.mark.integration

LORAFLEET = str(Path(sys.executable).with_name("lorafleet"))
JOB = ("--tenant", "acme", "--task", "sst2", "--rank", "4", "--base-model", "tiny-bert", "--max-steps", "3")


def run(env: dict[str, str], *args: str, local: bool = False, cwd: Path = ROOT,
        **kwargs) -> subprocess.CompletedProcess:
    """`lorafleet ARGS` through the console script: served when a server runs, or with `local` in
    the script's own process (it is told a socket where no server listens)."""
    if local:
        env = {**env, entry.SOCKET_ENV: str(Path(env[entry.SOCKET_ENV]).with_name("none.sock"))}
    return subprocess.run([LORAFLEET, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120,
                          **kwargs)


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
