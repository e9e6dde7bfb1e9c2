"""Warm ClientApps: a SuperNode whose ClientApp processes start with their imports done.

Flower 1.41 starts a fresh ``flwr-clientapp`` process for every message a SuperNode
receives, and each one imports Flower, torch and numpy again before it reads its
message (about 2 s and 470 MiB of the CUDA build of torch alone, on this project's
2-core machine). Run the SuperNode through this launcher instead::

    python -m deploy.warm -- flower-supernode --superlink HOST:9092 ...

The launcher starts the SuperNode as its child, with a private folder first on its
``PATH`` that holds a small ``flwr-clientapp`` (:mod:`deploy.warm_shim`). It imports the
heavy modules once (``--preload``, default ``numpy,torch``, plus Flower's ClientApp
runtime) and then, for every ClientApp the SuperNode's SuperExec starts, forks a child
that already has them: the child takes the starter's arguments, working folder,
environment and standard streams and runs Flower's own ``flwr-clientapp`` entry point.
It loads the app from the FAB exactly as a cold process does; none of the project's
modules are imported before the fork, so the code that runs is the FAB's.

What stays as with a cold process: the exit code and a killing signal reach the
SuperExec through the small process it started, which stands for the ClientApp (signals
sent to it are passed on; killing it kills the ClientApp); Python's ``random`` and
numpy's global generator are seeded afresh in each child; atexit handlers run. What
differs: a child shares its parent's memory pages until it writes them (its own peak
``VmHWM`` counts only the pages it touches), and the launcher holds the preloaded
modules for the SuperNode's lifetime. If the launcher cannot serve a request, the
ClientApp starts cold and says so on stderr.

``--pull-interval S`` also makes the SuperNode look for messages every ``S`` seconds
instead of Flower 1.41's 3 s (:mod:`deploy.pull`).

The launcher ends with the SuperNode's exit code (or dies of its signal); SIGTERM,
SIGINT and SIGHUP sent to the launcher go to the SuperNode; the SuperNode gets SIGTERM
if the launcher dies. Only the launcher's own user can connect (a 0700 folder, and the
peer's uid is checked).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import importlib
import json
import os
import random
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from deploy import warm_shim
from deploy.pull import check_interval

DEFAULT_PRELOAD = ("numpy", "torch")
"""Modules imported once by the launcher (the project's ClientApp needs both)."""
RUNTIME_MODULE = "flwr.supernode.cli.flwr_clientapp"
"""Flower's ``flwr-clientapp`` module: always preloaded."""
ENTRY_POINT = f"{RUNTIME_MODULE}:flwr_clientapp"
"""What every child runs (``module:function``; tests give their own)."""
SHIM_NAME = "flwr-clientapp"
MAX_HEADER = 1 << 20
"""Largest launch request (arguments and environment) accepted, in bytes."""
CHILD_NAME = b"flwr-clientapp"
"""The children's process name (``/proc/PID/comm``), as a cold ClientApp's."""
_PR_SET_NAME, _PR_SET_PDEATHSIG = 15, 1


class LaunchError(RuntimeError):
    """The launcher could not start (no ``flwr-clientapp`` to fall back on, bad args)."""


def real_clientapp(path: str | None = None) -> str:
    """The ``flwr-clientapp`` a cold start runs (this interpreter's first)."""
    own = Path(sys.executable).parent / SHIM_NAME
    found = str(own) if own.is_file() else shutil.which(SHIM_NAME, path=path)
    if not found:
        raise LaunchError(f"no {SHIM_NAME} found beside {sys.executable} or on PATH")
    return found


def write_shim(folder: Path) -> Path:
    """Install the ``flwr-clientapp`` shim in ``folder`` (see :mod:`deploy.warm_shim`)."""
    shim = folder / SHIM_NAME
    source = Path(warm_shim.__file__).read_text()
    shim.write_text(f"#!{sys.executable} -IS\n{source}")  # one argument: Linux passes one
    shim.chmod(0o700)
    return shim


def _prctl(option: int, value: int | bytes) -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)


def _die_with_parent() -> None:
    """In a child: SIGTERM when the launcher dies (it may have died already)."""
    parent = os.getppid()
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


@dataclass
class Job:
    """One forked ClientApp and the shim connection that stands for it."""

    pid: int
    pidfd: int
    conn: socket.socket
    killed: bool = False


@dataclass
class Launcher:
    """The SuperNode's parent: forks warm ClientApps for it (see the module docstring)."""

    command: list[str]
    preload: Sequence[str] = DEFAULT_PRELOAD
    folder: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="qfl-warm-")))
    jobs: dict[int, Job] = field(default_factory=dict)
    entry: str = ENTRY_POINT
    pull_interval: float | None = None

    def __post_init__(self) -> None:
        self.folder.chmod(0o700)
        self.socket_path = self.folder / "launcher.sock"
        self.selector = selectors.DefaultSelector()
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(self.socket_path))
        self.server.listen(64)
        self.supernode: subprocess.Popen | None = None
        self.node_fd = -1

    def environment(self) -> dict[str, str]:
        """The SuperNode's environment: the shim first on ``PATH``, where it connects,
        and the real ``flwr-clientapp`` for cold starts."""
        path = os.environ.get("PATH", "")
        cold = real_clientapp(path)
        write_shim(self.folder)
        return {
            **os.environ,
            "PATH": os.pathsep.join([str(self.folder), path]),
            warm_shim.SOCKET_ENV: str(self.socket_path),
            warm_shim.COLD_ENV: cold,
        }

    def start(self) -> None:
        """Start the SuperNode, then import what the ClientApps need."""
        env = self.environment()
        command = self.command
        if self.pull_interval is not None:  # the SuperNode's idle sleep shortened
            command = [sys.executable, "-m", "deploy.pull", str(self.pull_interval),
                       *self.command]
        self.supernode = subprocess.Popen(command, env=env, preexec_fn=_die_with_parent)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._forward)
        os.environ.update(env)  # what the children start from, before the shim's own
        started = time.perf_counter()
        for name in (*self.preload, RUNTIME_MODULE):
            importlib.import_module(name)
        print(f"deploy.warm: ClientApps start warm ({', '.join(self.preload) or 'nothing'} "
              f"and Flower's ClientApp runtime imported in "
              f"{time.perf_counter() - started:.1f} s)", file=sys.stderr, flush=True)

    def _forward(self, signum: int, _frame: object) -> None:
        if self.supernode is not None and self.supernode.poll() is None:
            self.supernode.send_signal(signum)

    def serve(self) -> int:
        """Serve launch requests until the SuperNode ends; returns its return code
        (``-N`` if signal N ended it, as :attr:`subprocess.Popen.returncode`)."""
        assert self.supernode is not None, "start() first"
        node_fd = self.node_fd = os.pidfd_open(self.supernode.pid)
        self.selector.register(self.server, selectors.EVENT_READ, "accept")
        self.selector.register(node_fd, selectors.EVENT_READ, "supernode")
        while True:
            for key, _mask in self.selector.select():
                if key.data == "accept":
                    self._accept()
                elif key.data == "supernode":
                    return self._finish(node_fd)
                elif isinstance(key.data, tuple):
                    self._job_event(*key.data)

    def _accept(self) -> None:
        try:
            conn, _addr = self.server.accept()
        except BlockingIOError:
            return
        with contextlib.suppress(OSError):
            self._launch(conn)
            return
        conn.close()  # the shim then starts the ClientApp cold

    def _launch(self, conn: socket.socket) -> None:
        conn.settimeout(10.0)
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        if struct.unpack("3i", creds)[1] != os.getuid():
            raise PermissionError("a launch request from another user")
        request, fds = _receive_request(conn)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child ends in os._exit (tested end to end)
            os._exit(self._child(request, fds, conn))
        for fd in fds:
            os.close(fd)
        job = Job(pid, os.pidfd_open(pid), conn)
        self.jobs[pid] = job
        self.selector.register(job.pidfd, selectors.EVENT_READ, (pid, "exit"))
        self.selector.register(conn, selectors.EVENT_READ, (pid, "shim"))
        try:
            conn.sendall(f"{pid}\n".encode())
        except OSError:  # the shim is gone already: so is the ClientApp
            self._job_event(pid, "shim")

    def _child(self, request: dict, fds: list[int], conn: socket.socket) -> int:
        """Become the ClientApp: Flower's ``flwr-clientapp`` with the shim's request."""
        code = 1
        try:
            inherited = [self.server.fileno(), conn.fileno(), self.node_fd,
                         getattr(self.selector, "fileno", lambda: -1)()]
            inherited += [j.pidfd for j in self.jobs.values()]
            inherited += [j.conn.fileno() for j in self.jobs.values()]
            for fd in inherited:  # the launcher's sockets and fds are not the ClientApp's
                with contextlib.suppress(OSError):
                    os.close(fd)
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
                os.close(fd)
            for signum in (signal.SIGTERM, signal.SIGHUP):
                signal.signal(signum, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            _die_with_parent()
            _prctl(_PR_SET_NAME, CHILD_NAME)
            os.chdir(request["cwd"])
            os.environ.clear()
            os.environ.update(request["env"])
            cold = request["env"].get(warm_shim.COLD_ENV) or real_clientapp()
            sys.argv = [cold, *request["argv"]]
            sys.path[0] = str(Path(cold).parent)  # as in a process started from it
            for name in [n for n in sys.modules if n == "deploy" or n.startswith("deploy.")]:
                del sys.modules[name]  # the FAB's own copy is what the app may import
            random.seed()
            if "numpy" in sys.modules:
                sys.modules["numpy"].random.seed()
            code = _run_entry_point(self.entry)
        except BaseException:  # noqa: BLE001 - the child must always end in os._exit
            import traceback

            traceback.print_exc()
        return code

    def _job_event(self, pid: int, what: str) -> None:
        job = self.jobs.get(pid)
        if job is None:  # ended earlier in the same batch of events
            return
        if what == "shim":  # the shim writes nothing after its request: this is its end
            self.selector.unregister(job.conn)
            if not job.killed:
                job.killed = True
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            return
        try:
            _pid, status = os.waitpid(pid, 0)
        except ChildProcessError:  # reaped already: its end is unknown
            status = 1 << 8
        self.selector.unregister(job.pidfd)
        os.close(job.pidfd)
        if not job.killed:
            self.selector.unregister(job.conn)
            with contextlib.suppress(OSError):
                job.conn.sendall(f"{status}\n".encode())
        job.conn.close()
        del self.jobs[pid]

    def _finish(self, node_fd: int) -> int:
        """The SuperNode ended: end its ClientApps, close, and return its return code."""
        assert self.supernode is not None
        code = self.supernode.wait()
        os.close(node_fd)
        for job in list(self.jobs.values()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(job.pid, signal.SIGTERM)
        for job in list(self.jobs.values()):  # each shim still learns how its child ended
            self._job_event(job.pid, "exit")
        self.close()
        return code

    def close(self) -> None:
        """Remove the socket and the shim folder."""
        self.server.close()
        shutil.rmtree(self.folder, ignore_errors=True)


def _receive_request(conn: socket.socket) -> tuple[dict, list[int]]:
    """The shim's request (see :func:`deploy.warm_shim.request`) and its three fds."""
    data, ancillary, _flags, _addr = conn.recvmsg(65536, socket.CMSG_SPACE(3 * 4))
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.extend(struct.unpack(f"{len(payload) // 4}i", payload[: len(payload) // 4 * 4]))
    try:
        if len(fds) != 3 or len(data) < 4:
            raise ValueError("a launch request without its header or its three streams")
        length = int.from_bytes(data[:4], "big")
        if length > MAX_HEADER:
            raise ValueError(f"a launch request of {length} bytes (at most {MAX_HEADER})")
        body = data[4:]
        while len(body) < length:
            chunk = conn.recv(length - len(body))
            if not chunk:
                raise ValueError("a launch request cut short")
            body += chunk
        request = json.loads(body)
        if not (isinstance(request.get("argv"), list) and isinstance(request.get("cwd"), str)
                and isinstance(request.get("env"), dict)):
            raise ValueError("a launch request without argv, cwd and env")
    except (ValueError, UnicodeDecodeError, AttributeError):
        for fd in fds:
            os.close(fd)
        raise OSError("bad launch request") from None
    return request, fds


def _run_entry_point(entry: str) -> int:
    """``entry`` (Flower's ``flwr-clientapp`` main), then what an interpreter exit runs."""
    code = 0
    module, _, function = entry.partition(":")
    try:
        getattr(importlib.import_module(module), function)()
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except KeyboardInterrupt:
        code = 130
    finally:
        atexit._run_exitfuncs()  # noqa: SLF001 - the exit handlers a cold process runs
        sys.stdout.flush()
        sys.stderr.flush()
    return code


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m deploy.warm [--preload M,M] -- flower-supernode ARGS``."""
    parser = argparse.ArgumentParser(
        prog="python -m deploy.warm",
        description="Run a SuperNode whose ClientApps start with their imports done.",
    )
    parser.add_argument("--preload", default=",".join(DEFAULT_PRELOAD),
                        help="modules to import once (comma-separated; default numpy,torch)")
    parser.add_argument(
        "--pull-interval", type=float, metavar="SECONDS",
        help="a flower-supernode looks for messages every SECONDS (0.05-3) instead of "
        "Flower 1.41's 3 s (see deploy/pull.py)",
    )
    parser.add_argument("--entry", default=ENTRY_POINT, help=argparse.SUPPRESS)
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="-- then the SuperNode's command line (flower-supernode ...)")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the SuperNode's command after --, e.g. -- flower-supernode ...")
    preload = [name.strip() for name in args.preload.split(",") if name.strip()]
    if args.pull_interval is not None:
        try:
            check_interval(args.pull_interval)
        except ValueError as err:
            parser.error(str(err))
        if Path(command[0]).name != "flower-supernode":
            parser.error("--pull-interval applies to a flower-supernode command only")
    try:
        launcher = Launcher(command, preload, entry=args.entry,
                            pull_interval=args.pull_interval)
        launcher.start()
    except (LaunchError, OSError, ImportError) as err:
        sys.exit(f"python -m deploy.warm: {err}")
    code = launcher.serve()
    if code < 0:  # die of the SuperNode's signal, so supervisors see how it ended
        with contextlib.suppress(OSError, ValueError):  # SIGKILL has no handler to reset
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    sys.exit(code)


if __name__ == "__main__":
    main()
