"""Process supervision for a local federation: start, watch and stop processes by PID.

A process is named by PID *and* start time (:class:`ProcessRef`), so a PID the kernel
has since handed to another process is never signalled. :func:`stop_processes` stops a
process tree (SuperLink or SuperNode, its SuperExec, ServerApp and ClientApps) with
SIGTERM, then SIGKILL; ``pids.json`` (:func:`write_pid_file`) lets
``python -m deploy.federation down <workdir>`` do the same after a hard kill.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

PID_FILE = "pids.json"
"""File in the work folder that lists every started process (name, PID, start time)."""


class FederationError(RuntimeError):
    """A process of the federation failed to start, died, or the run did not complete."""


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """State letter, parent PID and start time (clock ticks since boot) of ``pid``."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces: split after its last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[19])


def children_map() -> dict[int, list[int]]:
    """Every live PID's children, from one pass over ``/proc``."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _proc_stat(int(entry.name))):
            children.setdefault(stat[1], []).append(int(entry.name))
    return children


def command_line(pid: int) -> str:
    """The command line of ``pid``, arguments separated by spaces ("" when gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def exit_description(code: int) -> str:
    """How a process ended, from its :attr:`subprocess.Popen.returncode`.

    >>> exit_description(-9)
    'was killed by signal 9 (SIGKILL)'
    >>> exit_description(1)
    'exited with code 1'
    """
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "unknown signal"
        return f"was killed by signal {-code} ({name})"
    return f"exited with code {code}"


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
        return stat is not None and stat[2] == self.start_time and stat[0] != "Z"

    def descendants(self, children: Mapping[int, list[int]] | None = None) -> list[ProcessRef]:
        """Children, grandchildren, ... as they are now (SuperExec, ServerApp, ClientApps).

        ``children`` is a snapshot of :func:`children_map`, to look at several trees with one
        pass over ``/proc`` (default: a new pass).
        """
        children = children_map() if children is None else children
        found: list[ProcessRef] = []
        queue = [self.pid] if self.running() else []
        while queue:
            for child in children.get(queue.pop(), []):
                if ref := ProcessRef.of(child, f"{self.name}/child"):
                    found.append(ref)
                    queue.append(child)
        return found

    def signal(self, signum: int) -> None:
        """Send ``signum`` if this very process still runs."""
        if self.running():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)


def processes_mentioning(text: str, name: str = "marked") -> list[ProcessRef]:
    """Live processes (this one excepted) whose command line or environment holds ``text``.

    ``text`` is a path only one job uses (an ``FLWR_HOME``, a Ray temp dir): the processes
    started with it in their arguments or environment, and all their descendants that
    inherited that environment (Flower's detached SuperLink and SuperExec, Ray's GCS,
    raylets, agents and workers), however they were reparented.
    """
    found = []
    needle = text.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle not in cmdline and needle not in environ:
            continue
        if (ref := ProcessRef.of(int(entry.name), name)) and ref.running():
            found.append(ref)
    return found


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


def _wait_gone(refs: Sequence[ProcessRef], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(ref.running() for ref in refs):
        time.sleep(0.1)


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


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt so the clean-up of Ctrl-C runs for it too."""

    def handler(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def spawn(
    name: str, command: list[str], *, cwd: Path, env: Mapping[str, str], log_path: Path
) -> ManagedProcess:
    """Start ``command`` in a new session, its output appended to ``log_path``."""
    handle = log_path.open("ab")
    # A new session: Ctrl-C in the terminal reaches this program only, which then
    # stops the processes in order (SuperNodes first) instead of all at once.
    popen = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=handle,
        stderr=subprocess.STDOUT, start_new_session=True,
    )
    handle.close()
    ref = ProcessRef.of(popen.pid, name) or ProcessRef(popen.pid, -1, name)
    return ManagedProcess(name, popen, ref, log_path)


def tee_lines(
    stream: IO[str],
    log_path: Path,
    output: IO[str] | None,
    on_line: Callable[[str], None],
) -> threading.Thread:
    """Copy ``stream`` line by line to ``log_path`` and ``output``, then to ``on_line``.

    Runs in a daemon thread, which is returned started (join it once the writer exits).
    """

    def pump() -> None:
        with log_path.open("a") as log_file:
            for line in stream:
                log_file.write(line)
                log_file.flush()
                if output is not None:
                    output.write(line)
                    output.flush()
                on_line(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    return reader


def write_pid_file(workdir: Path, processes: Sequence[ManagedProcess]) -> None:
    """List ``processes`` in ``<workdir>/pids.json`` for :func:`stop_from_pid_file`."""
    pids = [
        {"name": p.name, "pid": p.ref.pid, "start_time": p.ref.start_time}
        for p in processes
    ]
    (workdir / PID_FILE).write_text(json.dumps(pids, indent=1))


def stop_from_pid_file(workdir: Path) -> list[ProcessRef]:
    """Stop the processes listed in ``<workdir>/pids.json`` that still run (same start).

    Raises :class:`FederationError`, naming the file, when ``workdir`` has no readable
    ``pids.json`` in the form ``up`` writes it.
    """
    path = Path(workdir) / PID_FILE
    if not path.is_file():
        where = "does not exist" if not Path(workdir).exists() else f"has no {PID_FILE}"
        raise FederationError(
            f"{workdir} {where}: give the --workdir of a `python -m deploy.federation up`"
        )
    try:
        entries = json.loads(path.read_text())
        refs = [ProcessRef(int(e["pid"]), int(e["start_time"]), str(e["name"])) for e in entries]
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise FederationError(
            f"{path} is not the list of processes `up` writes ({type(err).__name__}: {err})"
        ) from None
    refs.sort(key=lambda ref: ref.name == "superlink")
    return stop_processes([ref for ref in refs if ref.running()])


def interpreter_first_path(path: str) -> str:
    """``path`` with this interpreter's ``bin`` folder first.

    Flower's processes start one another by name (a SuperNode's SuperExec starts
    ``flwr-clientapp`` for every message): found beside this interpreter, they run in
    its environment, and not through a version manager's shim (pyenv's costs 0.2-0.3 s
    a start here).
    """
    own = str(Path(sys.executable).parent)
    return os.pathsep.join([own, *(p for p in path.split(os.pathsep) if p and p != own)])


SUPEREXEC_POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"
SUPEREXEC_POLL_SECONDS = "0.2"
"""How often a SuperNode's SuperExec asks for a ClientApp to start (Flower's default is
1 s, a mean 0.5 s added to every message); set in the environment to change it."""


def flower_environment(flwr_home: Path) -> dict[str, str]:
    """The environment of a federation's Flower processes: this one's, with ``FLWR_HOME``,
    this interpreter first on ``PATH`` and a brisker SuperExec poll unless one is set."""
    return {
        SUPEREXEC_POLL_ENV: SUPEREXEC_POLL_SECONDS, **os.environ, "FLWR_HOME": str(flwr_home),
        "PATH": interpreter_first_path(os.environ.get("PATH", "")),
    }
