"""``python -m deploy.warm``: warm ClientApps behave as cold ones, from outside.

A launcher runs with a stand-in SuperNode and a stand-in ClientApp entry point
(``tests/warm_entry.py``); each test starts the ``flwr-clientapp`` shim as a SuperExec
would and looks only at what a SuperExec or an operator sees: exit codes, signals,
streams, files, PIDs. The real thing (Flower's SuperNode, the project's ClientApp) runs in
``tests/test_deployment.py`` and ``tests/test_trust_deploy.py``, whose federations use the
launcher by default.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from deploy.ports import PROJECT_ROOT
from deploy.processes import ProcessRef
from deploy.pull import check_interval, install

TESTS = Path(__file__).resolve().parent
ENTRY = TESTS / "warm_entry.py"


def _wait_for(predicate, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    ref = ProcessRef.of(pid, "checked")
    return ref is not None and ref.running()  # neither gone nor a zombie


class Launcher:
    """A ``python -m deploy.warm`` process with the stand-ins, and its shim's setting."""

    def __init__(self, tmp: Path, supernode_args: tuple[str, ...] = ()) -> None:
        self.env_file = tmp / "supernode-env.json"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), str(TESTS)])}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "deploy.warm", "--preload", "numpy",
             "--entry", "warm_entry:main", "--",
             sys.executable, str(ENTRY), str(self.env_file), *supernode_args],
            cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        _wait_for(lambda: self.env_file.is_file() and self.env_file.read_text())
        self.seen = json.loads(self.env_file.read_text())
        self.folder = Path(self.seen["QFL_WARM_SOCKET"]).parent
        self.shim = self.folder / "flwr-clientapp"
        self.supernode_pid = int(
            subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True,
                           text=True, check=True).stdout.split()[0]
        )

    def shim_env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, **{k: v for k, v in self.seen.items() if v is not None},
                **extra}

    def run(self, *args: str, cwd: Path | None = None, **extra: str):
        return subprocess.run([str(self.shim), *args], env=self.shim_env(**extra), cwd=cwd,
                              capture_output=True, text=True, timeout=60)

    def start(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([str(self.shim), *args], env=self.shim_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if _alive(self.supernode_pid):
            os.kill(self.supernode_pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def launcher(tmp_path_factory) -> Iterator[Launcher]:
    started = Launcher(tmp_path_factory.mktemp("warm"))
    yield started
    started.stop()


@pytest.fixture
def own_launcher(tmp_path) -> Iterator[Callable[..., Launcher]]:
    """Starts a launcher of the test's own (whose life the test ends); stops it after."""
    started: list[Launcher] = []

    def start(*supernode_args: str) -> Launcher:
        started.append(Launcher(tmp_path, supernode_args))
        return started[-1]

    yield start
    for each in started:
        each.stop()


@pytest.mark.slow  # a launcher of its own, or torch: a few seconds
def test_the_launcher_says_what_it_preloaded(launcher, tmp_path):
    started = Launcher(tmp_path)
    started.stop()
    _out, err = started.process.communicate(timeout=30)
    assert b"deploy.warm: ClientApps start warm (numpy and Flower's ClientApp runtime" in err


def test_the_shim_and_socket_are_private_to_the_user(launcher):
    assert stat.S_IMODE(launcher.folder.stat().st_mode) == 0o700
    assert launcher.seen["PATH"].split(os.pathsep)[0] == str(launcher.folder)
    assert Path(launcher.seen["QFL_WARM_COLD"]).name == "flwr-clientapp"
    assert Path(launcher.seen["QFL_WARM_COLD"]).parent != launcher.folder


def test_a_child_gets_the_starters_arguments_folder_environment_and_streams(
    launcher, tmp_path
):
    report = tmp_path / "report.json"
    done = launcher.run("report", str(report), cwd=tmp_path, WARM_TEST_MARKER="m-1")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "to stdout\n"
    assert done.stderr == "to stderr\n"
    seen = json.loads(report.read_text())
    assert seen["argv"][1:] == ["report", str(report)]
    assert Path(seen["argv"][0]) == Path(launcher.seen["QFL_WARM_COLD"])
    assert seen["cwd"] == str(tmp_path)
    assert seen["marker"] == "m-1"
    assert seen["comm"] == "flwr-clientapp"
    assert seen["ppid"] == launcher.process.pid  # forked by the launcher: warm, not cold
    # The project's modules are not carried over from the launcher: the app's own copy
    # (the FAB's) is what an import finds.
    assert seen["deploy_loaded"] == []
    assert seen["path0"] == str(Path(launcher.seen["QFL_WARM_COLD"]).parent)


def test_children_draw_different_random_numbers(launcher, tmp_path):
    draws = []
    for index in range(2):
        report = tmp_path / f"report-{index}.json"
        assert launcher.run("report", str(report)).returncode == 0
        seen = json.loads(report.read_text())
        draws.append((seen["random"], seen["numpy_random"]))
    assert draws[0][0] != draws[1][0]
    assert draws[0][1] != draws[1][1]


@pytest.mark.parametrize("code", [0, 1, 7, 255])
def test_the_exit_code_reaches_the_starter(launcher, code):
    assert launcher.run("exit", str(code)).returncode == code


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGSEGV, signal.SIGTERM])
def test_a_child_killed_by_a_signal_kills_its_shim_with_the_same_signal(launcher, signum):
    assert launcher.run("signal", str(int(signum))).returncode == -signum


def test_sigterm_to_the_shim_reaches_the_child(launcher, tmp_path):
    pid_file = tmp_path / "pid"
    shim = launcher.start("wait", str(pid_file))
    _wait_for(lambda: pid_file.is_file() and pid_file.read_text())
    shim.send_signal(signal.SIGTERM)
    assert shim.wait(timeout=20) == 3
    assert (tmp_path / "pid.term").read_text() == "term"


def test_killing_the_shim_kills_the_child(launcher, tmp_path):
    pid_file = tmp_path / "pid"
    shim = launcher.start("wait", str(pid_file))
    _wait_for(lambda: pid_file.is_file() and pid_file.read_text())
    child = int(pid_file.read_text())
    shim.kill()
    shim.wait(timeout=20)
    _wait_for(lambda: not _alive(child))
    assert not (tmp_path / "pid.term").exists()  # SIGKILL: no clean-up ran


@pytest.mark.parametrize("payload", [
    b"", b"\x00\x00", b"\xff\xff\xff\xff{}", b"\x00\x00\x00\x05nojsn",
    b"\x00\x00\x00\x02{}", b"\x00\x00\x00\x10" + b"[" * 16,
])
def test_hostile_requests_are_refused_and_the_launcher_serves_on(launcher, tmp_path, payload):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(launcher.seen["QFL_WARM_SOCKET"])
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(20)
        assert sock.recv(64) == b""  # closed without starting anything
    assert launcher.process.poll() is None
    assert launcher.run("exit", "5").returncode == 5


def test_without_a_launcher_the_shim_starts_the_clientapp_cold(launcher, tmp_path):
    cold = tmp_path / "cold-clientapp"
    cold.write_text(f"#!{sys.executable}\nimport sys\nprint('cold', *sys.argv[1:])\n")
    cold.chmod(0o700)
    for extra in ({"QFL_WARM_SOCKET": str(tmp_path / "nothing.sock")},
                  {"QFL_WARM_SOCKET": ""}):
        done = launcher.run("--token", "t", QFL_WARM_COLD=str(cold), **extra)
        assert done.returncode == 0
        assert done.stdout == "cold --token t\n"
        assert "no warm launcher" in done.stderr


@pytest.mark.slow  # a launcher of its own, or torch: a few seconds
def test_the_launcher_ends_as_its_supernode_ends(own_launcher):
    started = own_launcher("exit", "4")
    assert started.process.wait(timeout=30) == 4
    assert not started.folder.exists()  # socket and shim removed


@pytest.mark.slow  # a launcher of its own, or torch: a few seconds
def test_a_supernode_killed_from_outside_takes_the_launcher_and_its_clientapps(
    own_launcher, tmp_path
):
    started = own_launcher()
    pid_file = tmp_path / "pid"
    shim = started.start("wait", str(pid_file))
    _wait_for(lambda: pid_file.is_file() and pid_file.read_text())
    os.kill(started.supernode_pid, signal.SIGKILL)
    assert started.process.wait(timeout=30) == -signal.SIGKILL
    assert shim.wait(timeout=30) == 3  # the ClientApp got SIGTERM and cleaned up
    assert (tmp_path / "pid.term").read_text() == "term"


@pytest.mark.slow  # a launcher of its own, or torch: a few seconds
def test_a_launcher_killed_from_outside_takes_its_supernode(own_launcher):
    started = own_launcher()
    started.process.kill()
    started.process.wait(timeout=30)
    _wait_for(lambda: not _alive(started.supernode_pid))


@pytest.mark.slow  # a launcher of its own, or torch: a few seconds
def test_sigterm_to_the_launcher_stops_the_supernode_and_ends_with_it(own_launcher):
    started = own_launcher()
    started.process.send_signal(signal.SIGTERM)
    assert started.process.wait(timeout=30) == -signal.SIGTERM
    assert not _alive(started.supernode_pid)


def test_a_launcher_without_a_command_says_how_to_use_it():
    done = subprocess.run([sys.executable, "-m", "deploy.warm"], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "give the SuperNode's command after --" in done.stderr


# -- deploy.pull: the SuperNode's idle sleep ------------------------------------------------


@pytest.mark.parametrize("seconds", [0.05, 0.5, 3.0])
def test_pull_intervals_in_range_are_accepted(seconds):
    assert check_interval(seconds) == seconds


@pytest.mark.parametrize("seconds", [0.0, 0.049, 3.01, -1.0, float("nan"), float("inf")])
def test_pull_intervals_out_of_range_are_refused(seconds):
    with pytest.raises(ValueError, match="--pull-interval"):
        check_interval(seconds)


@pytest.fixture
def supernode_loop():
    from flwr.supernode import start_client_internal as loop

    yield loop
    loop.time = time  # what Flower's module had


def test_the_pull_interval_shortens_only_the_supernodes_idle_sleep(supernode_loop):
    assert install(0.05) is None
    clock = supernode_loop.time
    started = time.perf_counter()
    clock.sleep(3)  # Flower's idle sleep
    assert time.perf_counter() - started < 1.0
    started = time.perf_counter()
    clock.sleep(0.2)  # any other sleep is as asked
    assert time.perf_counter() - started >= 0.2
    assert clock.time is time.time and clock.monotonic is time.monotonic


def test_the_pull_interval_is_not_applied_to_another_flower(supernode_loop, monkeypatch):
    import flwr

    monkeypatch.setattr(flwr, "__version__", "1.42.0")
    assert install(0.5) == "Flower 1.42.0 is not 1.41"
    assert supernode_loop.time is time


def test_the_pull_interval_is_not_applied_to_another_loop(supernode_loop, monkeypatch):
    import inspect

    monkeypatch.setattr(inspect, "getsource", lambda _obj: "while True: time.sleep(5)")
    assert "not the one this was written for" in install(0.5)
    assert supernode_loop.time is time


@pytest.mark.parametrize(("args", "message"), [
    (["--pull-interval", "0", "--", "flower-supernode"], "--pull-interval 0.0 is not allowed"),
    (["--pull-interval", "0.5", "--", "python"], "applies to a flower-supernode command only"),
])
def test_the_launcher_refuses_a_bad_pull_interval(args, message):
    done = subprocess.run([sys.executable, "-m", "deploy.warm", *args], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert message in done.stderr


@pytest.mark.slow  # a launcher of its own, or torch: a few seconds
def test_the_memory_benchmarks_tell_launcher_shim_and_clientapp_apart(launcher, tmp_path):
    from benchmarks.edge_client import _private_kib, _program, _status_kib

    pid_file = tmp_path / "pid"
    shim = launcher.start("wait", str(pid_file))
    try:
        _wait_for(lambda: pid_file.is_file() and pid_file.read_text())
        child = int(pid_file.read_text())
        assert _program(child) == "flwr-clientapp"
        assert _program(shim.pid) == "warm-shim"
        assert _program(launcher.process.pid) == "deploy.warm"
        pulled = subprocess.Popen([sys.executable, "-m", "deploy.pull", "0.5", "sleep"],
                                  cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        try:
            _wait_for(lambda: b"deploy.pull" in Path(f"/proc/{pulled.pid}/cmdline").read_bytes())
            assert _program(pulled.pid) == "flower-supernode"
        finally:
            pulled.kill()
            pulled.wait()
        # The child shares the launcher's pages: it holds fewer of its own than it maps.
        assert 0 < _private_kib(child) < _status_kib(child, "VmRSS")
    finally:
        shim.send_signal(signal.SIGTERM)
        shim.wait(timeout=20)
