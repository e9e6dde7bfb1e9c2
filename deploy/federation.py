"""A local multi-process federation: one SuperLink, N SuperNodes, one run, then a clean stop.

``python -m deploy.federation up --supernodes 3`` starts ``flower-superlink`` (deployment
runtime, TLS on) and three ``flower-supernode`` processes on 127.0.0.1, node ``i`` with
node config ``partition-id=i num-partitions=3``; waits until all three are online;
submits the app with ``flwr run`` to that SuperLink, streaming the ServerApp's log; and
when the run ends, on Ctrl-C or on any error, stops every process it started, by PID.

Everything the federation writes goes into one work folder (default: a new temporary
folder): ``certs/`` (CA, server certificate, SuperNode keys), ``flwr-home/`` (the
``FLWR_HOME`` of all processes, so the user's ``~/.flwr`` is never touched, with a
``config.toml`` naming the SuperLink connection ``local-deployment``), ``app/`` (a copy of
the app that ``flwr run`` builds its FAB from; ``flwr run`` rewrites the
``pyproject.toml`` it is given, so it gets a copy), ``logs/`` (one log per process) and
``pids.json`` (for ``python -m deploy.federation down <workdir>`` after a hard kill).

Runtime dependency installation (``uv sync``) is disabled on the SuperLink
(``--disable-runtime-dependency-installation``); SuperNodes only install when given
``--allow-runtime-dependency-installation``, which is never passed here. The apps use the
packages installed in this Python environment.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from deploy.certs import NodeKeyFiles, TlsFiles, generate_supernode_keys, generate_tls_files

PROJECT_ROOT = Path(__file__).resolve().parents[1]
APP_PARTS = ("pyproject.toml", "README.md", "client", "server", "strategies", "quantum", "relay")
"""What ``flwr run`` needs to build the app bundle (FAB): the config and the packages."""
CONNECTION = "local-deployment"
"""Name of the SuperLink connection in the federation's ``FLWR_HOME/config.toml``."""
RESERVED_PORTS = frozenset(range(39091, 39094))
"""Ports of the local-simulation SuperLink that ``flwr run .`` starts; never taken here."""
HOST = "127.0.0.1"


class FederationError(RuntimeError):
    """A process of the federation failed to start, died, or the run did not complete."""


# ----------------------------------------------------------------------------- processes


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """State letter, parent PID and start time (clock ticks since boot) of ``pid``."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces: split after its last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[19])


def _children(pid: int) -> list[int]:
    """PIDs whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _proc_stat(int(entry.name))) and stat[1] == pid:
            found.append(int(entry.name))
    return found


@dataclass(frozen=True)
class ProcessRef:
    """A process named by PID and start time, so a reused PID is never mistaken for it."""

    pid: int
    start_time: int
    name: str

    @classmethod
    def of(cls, pid: int, name: str) -> ProcessRef | None:
        """The running process ``pid``, or None when it is gone."""
        stat = _proc_stat(pid)
        return cls(pid, stat[2], name) if stat else None

    def running(self) -> bool:
        """True while this very process exists and is not a zombie."""
        stat = _proc_stat(self.pid)
        return bool(stat) and stat[2] == self.start_time and stat[0] != "Z"

    def descendants(self) -> list[ProcessRef]:
        """Children, grandchildren, ... as they are now (SuperExec, ServerApp, ClientApps)."""
        found: list[ProcessRef] = []
        queue = [self.pid] if self.running() else []
        while queue:
            for child in _children(queue.pop()):
                if ref := ProcessRef.of(child, f"{self.name}/child"):
                    found.append(ref)
                    queue.append(child)
        return found

    def signal(self, signum: int) -> None:
        """Send ``signum`` if this very process still runs."""
        if self.running():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)


def stop_processes(refs: Sequence[ProcessRef], grace_seconds: float = 10.0) -> list[ProcessRef]:
    """SIGTERM ``refs`` and all their descendants, SIGKILL what outlives the grace period.

    Parameters
    ----------
    refs : sequence of ProcessRef
        Processes to stop, in order (each one's descendants are found before it is
        signalled, so a SuperExec reparented to init on its parent's exit is not lost).
    grace_seconds : float
        How long each step waits for the processes to exit.

    Returns
    -------
    list of ProcessRef
        Processes still running at the end (empty unless SIGKILL failed).
    """
    every: list[ProcessRef] = []
    for ref in refs:
        every.extend([ref, *ref.descendants()])
        ref.signal(signal.SIGTERM)
    _wait_gone(refs, grace_seconds)
    # Flower's SuperExecs only notice their parent's exit when they next poll for it.
    for ref in every:
        ref.signal(signal.SIGTERM)
    _wait_gone(every, grace_seconds / 2)
    for ref in every:
        ref.signal(signal.SIGKILL)
    _wait_gone(every, 5.0)
    return [ref for ref in every if ref.running()]


def copy_app(destination: Path, project_root: Path = PROJECT_ROOT) -> Path:
    """Copy the app (:data:`APP_PARTS`) to ``destination`` for ``flwr run``.

    ``flwr run`` rewrites the ``pyproject.toml`` it builds from (Flower 1.41's federations
    migration), so runs that must leave the checkout untouched submit a copy.
    """
    destination.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for part in APP_PARTS:
        source = project_root / part
        if source.is_dir():
            shutil.copytree(source, destination / part, ignore=ignore)
        elif source.is_file():
            shutil.copy2(source, destination / part)
    return destination


def _wait_gone(refs: Sequence[ProcessRef], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(ref.running() for ref in refs):
        time.sleep(0.1)


_HANDED_OUT: set[int] = set()
_PORT_ORDER = random.Random()  # its own generator: never touches the global `random`


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port(host: str = HOST) -> int:
    """A TCP port free on ``host`` now, outside :data:`RESERVED_PORTS`.

    Chosen below the kernel's ephemeral range, where the outgoing connections of many
    starting processes cannot take it before its server binds it, and never handed out
    twice by this process (a free port is only reserved once its server has bound it).
    """
    low, _high = _ephemeral_range()
    candidates = list(range(max(1024, low - 12_000), low))
    _PORT_ORDER.shuffle(candidates)
    for port in candidates:
        if port in RESERVED_PORTS or port in _HANDED_OUT:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise FederationError(f"no free TCP port found on {host} below {low}")


def _port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, port)) == 0


@dataclass
class ManagedProcess:
    """A Flower process started by the federation, with its log file."""

    name: str
    popen: subprocess.Popen
    ref: ProcessRef
    log_path: Path

    def exit_code(self) -> int | None:
        """The exit code, or None while it runs."""
        return self.popen.poll()

    def log_text(self) -> str:
        """Everything the process has logged so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


# ----------------------------------------------------------------------------- federation


@dataclass
class LocalFederation:
    """One SuperLink and its SuperNodes on 127.0.0.1, as separate processes.

    Use it as a context manager: leaving the ``with`` block, normally or by an exception
    (Ctrl-C included), stops every process it started.

    Parameters
    ----------
    workdir : Path
        Folder for certificates, ``FLWR_HOME``, the app copy, logs and ``pids.json``.
    tls : bool
        TLS between every client and the SuperLink (default). ``False`` is Flower's
        ``--insecure``: plain HTTP.
    auth : bool
        SuperNode authentication: the SuperLink accepts only SuperNodes whose public key
        was registered with ``flwr supernode register``. Needs TLS.
    project_root : Path
        The checkout whose app is run (and the working folder of the processes, so a
        relative ``output-dir`` lands in it, as with ``flwr run .``).
    superlink_port : int
        Port of the SuperLink (0: a free one on 127.0.0.1, chosen at start).
    superlink_host : str
        Host of the SuperLink: 127.0.0.1 for one this federation starts, or the name of
        one started elsewhere (see :meth:`connect`).
    root_certificates : Path, optional
        CA certificate of a SuperLink started elsewhere (TLS only; without it, the
        system's trust store verifies that SuperLink).
    """

    workdir: Path
    tls: bool = True
    auth: bool = False
    project_root: Path = PROJECT_ROOT
    superlink_port: int = 0
    superlink_host: str = HOST
    processes: list[ManagedProcess] = field(default_factory=list)
    tls_files: TlsFiles | None = None
    killed: list[str] = field(default_factory=list)
    root_certificates: Path | None = None

    def __post_init__(self) -> None:
        if self.auth and not self.tls:
            raise FederationError(
                "SuperNode authentication needs TLS: drop --insecure or drop --auth"
            )
        self.workdir = Path(self.workdir).resolve()
        self.certs_dir = self.workdir / "certs"
        self.flwr_home = self.workdir / "flwr-home"
        self.app_dir = self.workdir / "app"
        self.logs_dir = self.workdir / "logs"
        self.env = {**os.environ, "FLWR_HOME": str(self.flwr_home)}

    # -- set-up -------------------------------------------------------------------------

    def __enter__(self) -> LocalFederation:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def address(self) -> str:
        """``host:port`` of the SuperLink (Fleet, Control and Runtime API share it)."""
        return f"{self.superlink_host}:{self.superlink_port}"

    def prepare(self, names: Sequence[str] = ()) -> None:
        """Create the work folder, the TLS files (unless insecure) and the app copy."""
        for folder in (self.flwr_home, self.logs_dir):
            folder.mkdir(parents=True, exist_ok=True)
        if self.tls:
            self.tls_files = generate_tls_files(self.certs_dir, list(names))
        if self.app_dir.exists():
            shutil.rmtree(self.app_dir)
        copy_app(self.app_dir, self.project_root)

    def connect(self) -> None:
        """Use a SuperLink started elsewhere at :attr:`address` (another host or container).

        Creates ``flwr-home/`` with the connection and the app copy, and no certificates:
        the SuperLink's CA is :attr:`root_certificates`. Nothing is started, so
        :meth:`stop` has nothing to stop.
        """
        for folder in (self.flwr_home, self.logs_dir):
            folder.mkdir(parents=True, exist_ok=True)
        if self.app_dir.exists():
            shutil.rmtree(self.app_dir)
        copy_app(self.app_dir, self.project_root)
        self._write_connection()

    def wait_reachable(self, timeout: float = 120.0) -> None:
        """Wait until the SuperLink accepts TCP connections at :attr:`address`."""
        deadline = time.monotonic() + timeout
        while not _port_open(self.superlink_host, self.superlink_port):
            if time.monotonic() > deadline:
                raise FederationError(f"no SuperLink answered at {self.address} in {timeout} s")
            time.sleep(1.0)

    def node_keys(self, count: int) -> list[NodeKeyFiles]:
        """Generate ``count`` SuperNode key pairs in ``certs/``."""
        return generate_supernode_keys(self.certs_dir, count)

    def _write_connection(self) -> None:
        lines = ["[superlink]", f'default = "{CONNECTION}"', "", f"[superlink.{CONNECTION}]"]
        lines.append(f'address = "{self.address}"')
        ca_certificate = self.tls_files.ca_certificate if self.tls_files else self.root_certificates
        if not self.tls:
            lines.append("insecure = true")
        elif ca_certificate:
            lines.append(f'root-certificates = "{Path(ca_certificate).resolve()}"')
        (self.flwr_home / "config.toml").write_text("\n".join(lines) + "\n")

    def _spawn(self, name: str, command: list[str]) -> ManagedProcess:
        log_path = self.logs_dir / f"{name}.log"
        handle = log_path.open("ab")
        # A new session: Ctrl-C in the terminal reaches this program only, which then
        # stops the processes in order (SuperNodes first) instead of all at once.
        popen = subprocess.Popen(
            command, cwd=self.project_root, env=self.env, stdout=handle,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        handle.close()
        ref = ProcessRef.of(popen.pid, name) or ProcessRef(popen.pid, -1, name)
        process = ManagedProcess(name, popen, ref, log_path)
        self.processes.append(process)
        self._write_pids()
        return process

    def _write_pids(self) -> None:
        pids = [
            {"name": p.name, "pid": p.ref.pid, "start_time": p.ref.start_time}
            for p in self.processes
        ]
        (self.workdir / "pids.json").write_text(json.dumps(pids, indent=1))

    # -- processes ----------------------------------------------------------------------

    def start_superlink(self, timeout: float = 60.0) -> ManagedProcess:
        """Start ``flower-superlink`` (deployment runtime) and wait until it answers."""
        if self.tls and self.tls_files is None:
            raise FederationError("no TLS files yet: call prepare() before starting processes")
        self.superlink_port = self.superlink_port or free_port()
        command = [
            "flower-superlink",
            "--host", HOST,
            "--port", str(self.superlink_port),
            "--disable-runtime-dependency-installation",
            # In-memory state (Flower's default): a database file made 20 SuperNodes'
            # concurrent uploads fail with "database is locked" on this machine.
        ]
        if self.tls_files:
            command += [
                "--ssl-ca-certfile", str(self.tls_files.ca_certificate),
                "--ssl-certfile", str(self.tls_files.server_certificate),
                "--ssl-keyfile", str(self.tls_files.server_key),
            ]
        else:
            command.append("--insecure")
        if self.auth:
            command.append("--enable-supernode-auth")
        process = self._spawn("superlink", command)
        self._write_connection()
        deadline = time.monotonic() + timeout
        while not _port_open(HOST, self.superlink_port):
            if process.exit_code() is not None:
                raise FederationError(
                    f"flower-superlink exited with code {process.exit_code()}:\n"
                    + process.log_text()[-2000:]
                )
            if time.monotonic() > deadline:
                raise FederationError(f"flower-superlink did not open {self.address}")
            time.sleep(0.2)
        return process

    def start_supernode(
        self,
        partition_id: int,
        num_partitions: int,
        *,
        data_dir: str | None = None,
        private_key: Path | None = None,
        root_certificates: Path | None | bool = True,
        max_retries: int | None = None,
        name: str | None = None,
    ) -> ManagedProcess:
        """Start one ``flower-supernode`` with node config for its partition.

        Parameters
        ----------
        partition_id, num_partitions : int
            Node config ``partition-id`` and ``num-partitions``: which share of the
            training set this UAV holds.
        data_dir : str, optional
            Node config ``data-dir``: where this node's dataset archives are.
        private_key : Path, optional
            OpenSSH private key for SuperNode authentication.
        root_certificates : Path, bool or None
            CA certificate that verifies the SuperLink: ``True`` for the federation's
            own CA, ``None`` or ``False`` for none (the system's trust store, which does
            not know the federation's CA), or a path.
        max_retries : int, optional
            Connection attempts before the SuperNode gives up (default: no limit).
        name : str, optional
            Log and process name (default ``supernode-<partition_id>``).
        """
        if self.tls and self.tls_files is None:
            raise FederationError("no TLS files yet: call prepare() before starting processes")
        node_config = f"partition-id={partition_id} num-partitions={num_partitions}"
        if data_dir:
            node_config += f" data-dir={json.dumps(str(data_dir))}"
        command = [
            "flower-supernode",
            "--superlink", self.address,
            "--node-config", node_config,
            "--host", HOST,
            "--port", str(free_port()),
        ]
        if not self.tls:
            command.append("--insecure")
        elif root_certificates is True:
            command += ["--root-certificates", str(self.tls_files.ca_certificate)]
        elif root_certificates:
            command += ["--root-certificates", str(root_certificates)]
        if private_key:
            command += ["--auth-supernode-private-key", str(private_key)]
        if max_retries is not None:
            command += ["--max-retries", str(max_retries)]
        return self._spawn(name or f"supernode-{partition_id}", command)

    # -- flwr CLI -----------------------------------------------------------------------

    def flwr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        """Run a ``flwr`` CLI command against this federation's ``FLWR_HOME``."""
        return subprocess.run(
            ["flwr", *args], cwd=self.workdir, env=self.env, capture_output=True, text=True,
            timeout=timeout, check=False,
        )

    def _flwr_json(self, *args: str) -> dict[str, Any]:
        done = self.flwr(*args, "--format", "json")
        start = done.stdout.find("{")
        try:
            return json.loads(done.stdout[start:]) if start >= 0 else {}
        except json.JSONDecodeError:
            return {}

    def register_supernode(self, public_key: Path) -> int:
        """Register a SuperNode's public key with the SuperLink; returns its node ID."""
        reply = self._flwr_json("supernode", "register", str(public_key), CONNECTION)
        if not reply.get("success"):
            raise FederationError(f"registering {public_key} failed: {reply or 'no reply'}")
        return int(reply["node-id"])

    def nodes(self) -> list[dict[str, Any]]:
        """The SuperLink's node list (``flwr supernode list``)."""
        return self._flwr_json("supernode", "list", CONNECTION).get("nodes", [])

    def wait_online(self, count: int, timeout: float = 120.0) -> None:
        """Wait until ``count`` SuperNodes are online; fail early if one exits."""
        deadline = time.monotonic() + timeout
        while True:
            online = sum(node.get("status") == "online" for node in self.nodes())
            if online >= count:
                return
            self.check_alive()
            if time.monotonic() > deadline:
                raise FederationError(f"{online} of {count} SuperNodes online after {timeout} s")
            time.sleep(1.0)

    def check_alive(self) -> None:
        """Raise if any started process has exited (except those :meth:`kill` killed)."""
        for process in self.processes:
            if process.name in self.killed:
                continue
            if (code := process.exit_code()) is not None:
                raise FederationError(
                    f"{process.name} exited with code {code}; last lines of "
                    f"{process.log_path}:\n" + process.log_text()[-2000:]
                )

    def kill(self, name: str) -> list[ProcessRef]:
        """SIGKILL process ``name`` and its descendants at once, as a crash would.

        Fault injection: the federation goes on without it (see ``up --kill-supernode``).
        Returns the processes that were killed.
        """
        process = next((p for p in self.processes if p.name == name), None)
        if process is None:
            known = ", ".join(p.name for p in self.processes)
            raise FederationError(f"no process named {name!r}; started: {known}")
        self.killed.append(name)
        tree = [process.ref, *process.ref.descendants()]
        for ref in tree:
            ref.signal(signal.SIGKILL)
        return tree

    def run(
        self,
        run_config: str = "",
        output: IO[str] | None = None,
        timeout: float = 3600.0,
        on_line: Callable[[str], None] | None = None,
    ) -> tuple[int, str]:
        """Submit the app with ``flwr run --stream``, stream its log, wait for the end.

        Parameters
        ----------
        run_config : str
            ``--run-config`` overrides, e.g. ``"num-server-rounds=2"``.
        output : text stream, optional
            Where the streamed log goes besides ``logs/run.log`` (e.g. ``sys.stdout``).
        timeout : float
            Seconds before the run is given up.
        on_line : callable, optional
            Called with every line of the run's log as it arrives (fault injection,
            progress watchers).

        Returns
        -------
        tuple of (int, str)
            Run ID and final status as Flower reports it (``finished:completed`` when
            the ServerApp ended normally).
        """
        command = ["flwr", "run", str(self.app_dir), CONNECTION, "--stream"]
        if run_config:
            command += ["--run-config", run_config]
        log_path = self.logs_dir / "run.log"
        submit = subprocess.Popen(
            command, cwd=self.workdir, env=self.env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True,
        )
        submit_ref = ProcessRef.of(submit.pid, "flwr-run")
        run_ids: list[int] = []

        def pump() -> None:
            with log_path.open("a") as log_file:
                for line in submit.stdout:
                    log_file.write(line)
                    log_file.flush()
                    if output is not None:
                        output.write(line)
                        output.flush()
                    if match := re.search(r"Successfully started run (\d+)", line):
                        run_ids.append(int(match.group(1)))
                    if on_line is not None:
                        on_line(line)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        deadline = time.monotonic() + timeout
        try:
            while submit.poll() is None:
                self.check_alive()
                if time.monotonic() > deadline:
                    raise FederationError(f"the run did not finish within {timeout} s")
                time.sleep(0.5)
        finally:
            if submit.poll() is None and submit_ref:
                stop_processes([submit_ref], grace_seconds=5)
            reader.join(timeout=10)
        if not run_ids:
            raise FederationError(
                f"flwr run exited with code {submit.returncode} without starting a run; "
                f"see {log_path}"
            )
        run_id = run_ids[-1]
        return run_id, self.run_status(run_id)

    def run_status(self, run_id: int, settle_seconds: float = 30.0) -> str:
        """Flower's status of a run (``finished:completed``, ``finished:failed``, ...)."""
        deadline = time.monotonic() + settle_seconds
        status = "unknown"
        while time.monotonic() < deadline:
            runs = self._flwr_json("ls", CONNECTION, "--run-id", str(run_id)).get("runs", [])
            status = runs[0]["status"] if runs else "unknown"
            if status.startswith("finished"):
                break
            time.sleep(1.0)
        return status

    # -- tear-down ----------------------------------------------------------------------

    def stop(self) -> list[ProcessRef]:
        """Stop every started process (SuperNodes first, then the SuperLink), by PID.

        Returns
        -------
        list of ProcessRef
            Processes still running afterwards (empty when all stopped).
        """
        ordered = sorted(self.processes, key=lambda p: p.name == "superlink")
        left = stop_processes([p.ref for p in ordered])
        for process in ordered:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.popen.wait(timeout=5)
        return left


def stop_from_pid_file(workdir: Path) -> list[ProcessRef]:
    """Stop the processes listed in ``<workdir>/pids.json`` that still run (same start)."""
    entries = json.loads((Path(workdir) / "pids.json").read_text())
    refs = [ProcessRef(e["pid"], e["start_time"], e["name"]) for e in entries]
    refs.sort(key=lambda ref: ref.name == "superlink")
    return stop_processes([ref for ref in refs if ref.running()])


# ----------------------------------------------------------------------------- run outputs

RUN_FOLDER_LINE = re.compile(r"[Oo]utputs in (\S.*?)\s*$")
"""The ServerApp's log line that names the run folder (``Run <name>: outputs in <path>``)."""
ROUND_LINE = re.compile(r"Round (\d+)/\d+: test accuracy")
"""The ServerApp's log line that ends a round (after its checkpoint is due)."""


def check_run_outputs(run_dir: Path) -> list[str]:
    """What keeps a finished run's outputs from being complete (empty: nothing).

    Complete means: ``config.json``, ``final_model.pt`` and a ``metrics.json`` with one
    row per round from 0 to ``num-server-rounds``, and no round in which every sampled
    node failed (Flower still calls such a run completed).
    """
    run_dir = Path(run_dir)
    problems = []
    try:
        config = json.loads((run_dir / "config.json").read_text())
        rows = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError) as err:
        return [f"cannot read the run's config.json and metrics.json in {run_dir}: {err}"]
    rounds = config["run_config"]["num-server-rounds"]
    found = [row.get("round") for row in rows]
    if found != list(range(rounds + 1)):
        problems.append(f"metrics.json has rounds {found}, expected 0..{rounds}")
    if not (run_dir / "final_model.pt").is_file():
        problems.append(f"no final_model.pt in {run_dir}")
    for row in rows:
        sampled, failed = row.get("clients_sampled", 0), row.get("clients_failed", 0)
        if sampled and failed >= sampled:
            reasons = sorted(set(row.get("failed_reasons", {}).values()))
            problems.append(
                f"round {row['round']}: all {sampled} sampled nodes failed ({'; '.join(reasons)})"
            )
    return problems


# ----------------------------------------------------------------------------- command line


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.federation",
        description="Start a local deployment federation (1 SuperLink, N SuperNodes), "
        "run the app once with flwr run, and stop everything.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start, run once, stop")
    up.add_argument("--supernodes", type=int, default=3, help="SuperNodes (UAVs), default 3")
    security = up.add_mutually_exclusive_group()
    security.add_argument("--tls", action="store_true", help="TLS (the default)")
    security.add_argument(
        "--insecure", action="store_true", help="no TLS: plain HTTP on 127.0.0.1"
    )
    up.add_argument(
        "--auth", action="store_true",
        help="SuperNode authentication: generate and register one key per SuperNode",
    )
    up.add_argument("--rounds", type=int, help="num-server-rounds (shortcut)")
    up.add_argument("--run-config", default="", help='run config overrides, "k1=v1 k2=v2"')
    up.add_argument("--data-dir", help="node config data-dir for every SuperNode")
    up.add_argument("--workdir", type=Path, help="work folder (default: a new temporary one)")
    up.add_argument("--port", type=int, default=0, help="SuperLink port (default: a free one)")
    up.add_argument("--timeout", type=float, default=3600.0, help="seconds before giving up")
    up.add_argument("--keep", action="store_true", help="keep a temporary work folder")
    up.add_argument(
        "--kill-supernode", type=int, metavar="INDEX",
        help="fault injection: SIGKILL SuperNode INDEX (and its ClientApp) once the round "
        "given by --kill-after-round has ended; the run must go on without it",
    )
    up.add_argument(
        "--kill-after-round", type=int, default=1, metavar="ROUND",
        help="the round after which --kill-supernode strikes (default 1)",
    )
    down = commands.add_parser("down", help="stop what an interrupted `up` left running")
    down.add_argument("workdir", type=Path)
    # A SuperLink started elsewhere (docker/compose.yml): register keys, or submit a run.
    register = commands.add_parser(
        "register", help="register SuperNode public keys with a running SuperLink"
    )
    submit = commands.add_parser(
        "submit", help="wait for N SuperNodes on a running SuperLink, run the app once"
    )
    for remote in (register, submit):
        remote.add_argument(
            "--superlink", required=True, metavar="HOST:PORT", help="the SuperLink's address"
        )
        trust = remote.add_mutually_exclusive_group()
        trust.add_argument(
            "--root-certificates", type=Path, help="CA certificate of the SuperLink (TLS)"
        )
        trust.add_argument("--insecure", action="store_true", help="no TLS: plain HTTP")
        remote.add_argument("--workdir", type=Path, help="work folder (default: a temporary one)")
        remote.add_argument(
            "--timeout", type=float, default=3600.0, help="seconds before giving up"
        )
    register.add_argument("public_keys", type=Path, nargs="+", help="OpenSSH public key files")
    submit.add_argument("--supernodes", type=int, default=3, help="SuperNodes to wait for")
    submit.add_argument("--rounds", type=int, help="num-server-rounds (shortcut)")
    submit.add_argument("--run-config", default="", help='run config overrides, "k1=v1 k2=v2"')
    submit.add_argument(
        "--app", type=Path, default=PROJECT_ROOT, help="the app's checkout (default: this one)"
    )
    args = parser.parse_args(argv)
    if args.command in ("register", "submit"):
        host, _, port = args.superlink.rpartition(":")
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            parser.error(f"--superlink {args.superlink!r} is not allowed; use HOST:PORT")
        args.superlink_host, args.superlink_port = host.strip("[]"), int(port)
    if args.command == "submit":
        if args.supernodes < 1:
            parser.error(f"--supernodes {args.supernodes} is not allowed; use 1 or more")
        if args.rounds is not None and args.rounds < 1:
            parser.error(f"--rounds {args.rounds} is not allowed; use 1 or more")
    if args.command == "up":
        if args.supernodes < 1:
            parser.error(f"--supernodes {args.supernodes} is not allowed; use 1 or more")
        if args.rounds is not None and args.rounds < 1:
            parser.error(f"--rounds {args.rounds} is not allowed; use 1 or more")
        if args.auth and args.insecure:
            parser.error("--auth needs TLS; drop --insecure")
        if args.kill_supernode is not None and not 0 <= args.kill_supernode < args.supernodes:
            parser.error(
                f"--kill-supernode {args.kill_supernode} is not allowed; use 0 to "
                f"{args.supernodes - 1} (one of the --supernodes {args.supernodes})"
            )
        if args.kill_after_round < 0:
            parser.error(
                f"--kill-after-round {args.kill_after_round} is not allowed; use 0 or more"
            )
        if args.port and (args.port in RESERVED_PORTS or not 1024 <= args.port <= 65535):
            parser.error(f"--port {args.port} is not allowed; use 1024..65535 except 39091-39093")
    return args


def _announce(message: str) -> None:
    print(f"[federation] {message}", flush=True)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt so the clean-up of Ctrl-C runs for it too."""

    def handler(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _RunWatcher:
    """Reads the run's log: remembers the run folder, and kills a SuperNode on cue."""

    def __init__(
        self, federation: LocalFederation, kill_index: int | None, after_round: int
    ) -> None:
        self.federation = federation
        self.kill_index = kill_index
        self.after_round = after_round
        self.run_dir: Path | None = None

    def __call__(self, line: str) -> None:
        if (match := RUN_FOLDER_LINE.search(line)) and self.run_dir is None:
            self.run_dir = Path(match.group(1))
        match = ROUND_LINE.search(line)
        if self.kill_index is not None and match and int(match.group(1)) >= self.after_round:
            name = f"supernode-{self.kill_index}"
            self.kill_index = None
            tree = self.federation.kill(name)
            _announce(f"fault injection: killed {name} after round {match.group(1)} "
                      f"(pids {', '.join(str(ref.pid) for ref in tree)})")


def up(args: argparse.Namespace) -> int:
    """Start the federation, run once, stop everything; the exit code says how it went."""
    temporary = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="qfl-federation-")) if temporary else args.workdir
    federation = LocalFederation(
        workdir, tls=not args.insecure, auth=args.auth, superlink_port=args.port
    )
    run_config = args.run_config
    if args.rounds is not None:
        run_config = f"{run_config} num-server-rounds={args.rounds}".strip()
    code = 1
    with _sigterm_as_interrupt():
        try:
            federation.prepare()
            keys = federation.node_keys(args.supernodes) if args.auth else []
            superlink = federation.start_superlink()
            _announce(
                f"SuperLink pid {superlink.ref.pid} on {federation.address} "
                f"({'TLS' if federation.tls else 'INSECURE, no TLS'}"
                f"{', SuperNode auth' if args.auth else ''}); work folder {workdir}"
            )
            for key in keys:
                node_id = federation.register_supernode(key.public_key)
                _announce(f"registered {key.public_key.name} as node {node_id}")
            for index in range(args.supernodes):
                node = federation.start_supernode(
                    index, args.supernodes, data_dir=args.data_dir,
                    private_key=keys[index].private_key if keys else None,
                )
                _announce(f"SuperNode {index} pid {node.ref.pid}, log {node.log_path}")
            federation.wait_online(args.supernodes)
            _announce(f"{args.supernodes} SuperNodes online; submitting the run")
            watcher = _RunWatcher(federation, args.kill_supernode, args.kill_after_round)
            run_id, status = federation.run(
                run_config, output=sys.stdout, timeout=args.timeout, on_line=watcher
            )
            _announce(f"run {run_id}: {status}")
            code = 0 if status == "finished:completed" else 1
            if code == 0:
                problems = (
                    check_run_outputs(watcher.run_dir) if watcher.run_dir
                    else ["the ServerApp never logged its run folder"]
                )
                for problem in problems:
                    _announce(f"run incomplete: {problem}")
                code = 1 if problems else 0
        except KeyboardInterrupt:
            _announce("interrupted")
            code = 130
        except FederationError as err:
            _announce(f"error: {err}")
        finally:
            # A second Ctrl-C must not cut the clean-up short.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            left = federation.stop()
            if left:
                _announce("still running: " + ", ".join(f"{r.name} {r.pid}" for r in left))
                code = code or 1
            else:
                _announce(f"stopped {len(federation.processes)} processes and their children")
            if temporary and not args.keep and code == 0:
                shutil.rmtree(workdir, ignore_errors=True)
            elif temporary:
                _announce(f"logs kept in {federation.logs_dir}")
    return code


def remote(args: argparse.Namespace) -> int:
    """``register`` or ``submit`` against a SuperLink started elsewhere (a container).

    ``register`` waits for the SuperLink and registers each public key; ``submit`` waits
    for the SuperLink and for ``--supernodes`` SuperNodes online, then runs the app once
    with ``flwr run --stream``. The exit code is 0 when every key was registered, or when
    Flower reports the run ``finished:completed``.
    """
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix=f"qfl-{args.command}-"))
    federation = LocalFederation(
        workdir, tls=not args.insecure, project_root=getattr(args, "app", PROJECT_ROOT),
        superlink_host=args.superlink_host, superlink_port=args.superlink_port,
        root_certificates=args.root_certificates,
    )
    started = time.monotonic()
    try:
        federation.connect()
        federation.wait_reachable(args.timeout)
        if args.command == "register":
            for key in args.public_keys:
                node_id = federation.register_supernode(key)
                _announce(f"registered {key.name} as node {node_id}")
            return 0
        _announce(f"SuperLink {federation.address} answers; waiting for {args.supernodes} "
                  "SuperNodes")
        federation.wait_online(args.supernodes, args.timeout)
        _announce(f"{args.supernodes} SuperNodes online; submitting the run")
        run_config = args.run_config
        if args.rounds is not None:
            run_config = f"{run_config} num-server-rounds={args.rounds}".strip()
        left = args.timeout - (time.monotonic() - started)
        run_id, status = federation.run(run_config, output=sys.stdout, timeout=left)
        _announce(f"run {run_id}: {status}")
        return 0 if status == "finished:completed" else 1
    except FederationError as err:
        _announce(f"error: {err}")
        return 1
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point (``up``, ``down``, ``register`` or ``submit``)."""
    args = _parse_args(argv)
    if args.command == "down":
        left = stop_from_pid_file(args.workdir)
        _announce("all stopped" if not left else f"still running: {left}")
        return 0 if not left else 1
    if args.command in ("register", "submit"):
        return remote(args)
    return up(args)


if __name__ == "__main__":
    sys.exit(main())
