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

This module holds :class:`LocalFederation` and the command line; the pieces it is made of
live beside it: :mod:`deploy.processes` (starting and stopping processes by PID),
:mod:`deploy.supervision` (a SuperNode that dies mid-run is a failed client),
:mod:`deploy.ports` (free ports, ``FLWR_HOME``, the app copy), :mod:`deploy.outputs`
(the run's log, what counts as success) and :mod:`deploy.arguments` (the options).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from deploy.arguments import parse_args
from deploy.certs import NodeKeyFiles, TlsFiles, generate_supernode_keys, generate_tls_files
from deploy.outputs import RunWatcher, check_run_outputs, run_summary
from deploy.ports import (
    CONNECTION,
    HOST,
    PROJECT_ROOT,
    copy_app,
    free_port,
    port_open,
    superlink_command,
    supernode_command,
    write_connection,
)
from deploy.processes import (
    FederationError,
    ManagedProcess,
    ProcessRef,
    flower_environment,
    sigterm_as_interrupt,
    spawn,
    stop_from_pid_file,
    stop_processes,
    tee_lines,
    write_pid_file,
)
from deploy.supervision import Supervisor

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
    notify : callable, optional
        Called with one line for each SuperNode that dies during a run (see
        :mod:`deploy.supervision`).
    warm : bool
        Start each SuperNode under :mod:`deploy.warm`, so its ClientApps are forked
        with Flower, numpy and torch already imported (default); ``False`` for Flower's
        cold ``flwr-clientapp`` processes.
    pull_interval : float or None
        With ``warm``: seconds between a SuperNode's looks for a message
        (:mod:`deploy.pull`; default 0.5, ``None`` for Flower's 3 s).
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
    notify: Callable[[str], None] | None = None
    status_details: dict[int, str] = field(default_factory=dict)
    warm: bool = True
    pull_interval: float | None = 0.5

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
        self.env = flower_environment(self.flwr_home)
        self.supervisor = Supervisor(self.processes, self.killed, self.notify)

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
            # The federation's own CA, made anew at each start (its SuperNodes get it).
            self.tls_files = generate_tls_files(self.certs_dir, list(names), replace=True)
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
        while not port_open(self.superlink_host, self.superlink_port):
            if time.monotonic() > deadline:
                raise FederationError(f"no SuperLink answered at {self.address} in {timeout} s")
            time.sleep(1.0)

    def node_keys(self, count: int) -> list[NodeKeyFiles]:
        """Generate ``count`` SuperNode key pairs in ``certs/``."""
        return generate_supernode_keys(self.certs_dir, count, replace=True)

    def _write_connection(self) -> None:
        ca_certificate = self.tls_files.ca_certificate if self.tls_files else self.root_certificates
        write_connection(self.flwr_home, self.address, tls=self.tls, ca_certificate=ca_certificate)

    def _spawn(self, name: str, command: list[str]) -> ManagedProcess:
        process = spawn(
            name, command, cwd=self.project_root, env=self.env,
            log_path=self.logs_dir / f"{name}.log",
        )
        self.processes.append(process)
        write_pid_file(self.workdir, self.processes)
        return process

    # -- processes ----------------------------------------------------------------------

    def start_superlink(self, timeout: float = 60.0) -> ManagedProcess:
        """Start ``flower-superlink`` (deployment runtime) and wait until it answers."""
        if self.tls and self.tls_files is None:
            raise FederationError("no TLS files yet: call prepare() before starting processes")
        self.superlink_port = self.superlink_port or free_port()
        command = superlink_command(self.superlink_port, self.tls_files, self.auth)
        process = self._spawn("superlink", command)
        self._write_connection()
        deadline = time.monotonic() + timeout
        while not port_open(HOST, self.superlink_port):
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
        if root_certificates is True:
            ca = self.tls_files.ca_certificate if self.tls and self.tls_files else None
        else:
            ca = root_certificates or None  # False: no CA given
        command = supernode_command(
            self.address, node_config, free_port(), tls=self.tls,
            root_certificates=ca, private_key=private_key,
            max_retries=max_retries,
        )
        if self.warm:  # ClientApps forked with their imports done (deploy.warm)
            pull = [] if self.pull_interval is None else [f"--pull-interval={self.pull_interval}"]
            command = [sys.executable, "-m", "deploy.warm", *pull, "--", *command]
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

    def check_alive(self, *, running: bool = False) -> None:
        """Raise if the federation cannot go on (:mod:`deploy.supervision` says when).

        Before the run every exit is fatal. During it (``running=True``) a SuperNode
        that exits is a failed client: recorded in :attr:`lost`, its left-over children
        stopped, announced through :attr:`notify`; the SuperLink or its SuperExec
        exiting, or the last SuperNode, still raises.
        """
        self.supervisor.check(running=running)

    @property
    def lost(self) -> dict[str, str]:
        """SuperNodes that died during the run (not by :meth:`kill`): how they ended."""
        return self.supervisor.lost

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

        def watch(line: str) -> None:
            if match := re.search(r"Successfully started run (\d+)", line):
                run_ids.append(int(match.group(1)))
            if on_line is not None:
                on_line(line)

        assert submit.stdout is not None  # started with stdout=PIPE
        reader = tee_lines(submit.stdout, log_path, output, watch)
        try:
            self._wait_submitted(submit, timeout)
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

    def _wait_submitted(self, submit: subprocess.Popen, timeout: float) -> None:
        """Wait until ``flwr run`` exits; raise if a process dies or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while submit.poll() is None:
            self.check_alive(running=True)
            if time.monotonic() > deadline:
                raise FederationError(f"the run did not finish within {timeout} s")
            time.sleep(0.5)

    def run_status(self, run_id: int, settle_seconds: float = 30.0) -> str:
        """Flower's status of a run (``finished:completed``, ``finished:failed``, ...)."""
        deadline = time.monotonic() + settle_seconds
        status = "unknown"
        while time.monotonic() < deadline:
            runs = self._flwr_json("ls", CONNECTION, "--run-id", str(run_id)).get("runs", [])
            status = runs[0]["status"] if runs else "unknown"
            self.status_details[run_id] = runs[0].get("status-details", "") if runs else ""
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


# ----------------------------------------------------------------------------- command line


def _announce(message: str) -> None:
    print(f"[federation] {message}", flush=True)


def _run_config(args: argparse.Namespace) -> str:
    """``--run-config``, with ``--rounds`` as ``num-server-rounds`` when given."""
    run_config = args.run_config
    if args.rounds is not None:
        run_config = f"{run_config} num-server-rounds={args.rounds}".strip()
    return run_config


def _start(federation: LocalFederation, args: argparse.Namespace, workdir: Path) -> None:
    """Prepare, start the SuperLink, register keys, start SuperNodes, wait for them."""
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


def _run_once(federation: LocalFederation, args: argparse.Namespace) -> int:
    """Submit the run, then check its outputs: 0 when it succeeded, else 1.

    Success is Flower's ``finished:completed`` and outputs that
    :func:`deploy.outputs.check_run_outputs` finds complete (every round recorded, one
    round at least aggregated an update).
    """
    _announce(f"{args.supernodes} SuperNodes online; submitting the run")
    watcher = RunWatcher(
        federation.kill, args.kill_supernode, args.kill_after_round, _announce
    )
    run_id, status = federation.run(
        _run_config(args), output=sys.stdout, timeout=args.timeout, on_line=watcher
    )
    details = federation.status_details.get(run_id)
    _announce(f"run {run_id}: {status}" + (f" ({details})" if details else ""))
    if status != "finished:completed":
        _announce(f"run failed: Flower reports {status}; the ServerApp's log is in "
                  f"{federation.logs_dir / 'run.log'}")
        return 1
    if watcher.run_dir is None:
        _announce("run incomplete: the ServerApp never logged its run folder")
        return 1
    if summary := run_summary(watcher.run_dir):
        _announce(summary)
    problems = check_run_outputs(watcher.run_dir)
    for problem in problems:
        _announce(f"run incomplete: {problem}")
    return 1 if problems else 0


def _stop_all(
    federation: LocalFederation, code: int, workdir: Path, temporary: bool, keep: bool
) -> int:
    """Stop every process, remove a temporary work folder after success; the exit code."""
    # A second Ctrl-C must not cut the clean-up short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    left = federation.stop()
    if left:
        _announce("still running: " + ", ".join(f"{r.name} {r.pid}" for r in left))
        code = code or 1
    else:
        _announce(f"stopped {len(federation.processes)} processes and their children")
    if temporary and not keep and code == 0:
        shutil.rmtree(workdir, ignore_errors=True)
    elif temporary:
        _announce(f"logs kept in {federation.logs_dir}")
    return code


def up(args: argparse.Namespace) -> int:
    """Start the federation, run once, stop everything; the exit code says how it went."""
    temporary = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="qfl-federation-")) if temporary else args.workdir
    federation = LocalFederation(
        workdir, tls=not args.insecure, auth=args.auth, superlink_port=args.port,
        notify=_announce, warm=not args.cold_clientapps,
    )
    code = 1
    with sigterm_as_interrupt():
        try:
            _start(federation, args, workdir)
            code = _run_once(federation, args)
        except KeyboardInterrupt:
            _announce("interrupted")
            code = 130
        except (FederationError, OSError) as err:
            _announce(f"error: {err}")
        finally:
            code = _stop_all(federation, code, workdir, temporary, args.keep)
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
        left = args.timeout - (time.monotonic() - started)
        run_id, status = federation.run(_run_config(args), output=sys.stdout, timeout=left)
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
    args = parse_args(argv)
    if args.command == "down":
        try:
            left = stop_from_pid_file(args.workdir)
        except FederationError as err:
            _announce(f"error: {err}")
            return 1
        _announce("all stopped" if not left else f"still running: {left}")
        return 0 if not left else 1
    if args.command in ("register", "submit"):
        return remote(args)
    return up(args)


if __name__ == "__main__":
    sys.exit(main())
