"""Stand-ins for what ``python -m deploy.warm`` runs: a ClientApp entry point and a SuperNode.

``main`` replaces Flower's ``flwr-clientapp`` main in a warm child (``--entry
warm_entry:main``); what it does is said by its arguments:

- ``report FILE``: writes what the child sees (PID, arguments, folder, environment,
  process name, a draw from ``random`` and numpy, which modules are loaded) to FILE,
  one line to stdout and one to stderr, and ends with code 0;
- ``exit N``: ends with code N;
- ``signal N``: kills itself with signal N;
- ``wait FILE``: writes its PID to FILE, then waits; SIGTERM makes it write
  ``FILE.term`` and end with code 3.

``supernode FILE`` stands in for ``flower-supernode``: it writes the environment it was
started with (where the shim is, the socket) to FILE and sleeps until it is signalled;
``supernode FILE exit N`` ends with code N once FILE is written.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from pathlib import Path


def _report(path: str) -> None:
    import numpy

    seen = {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "argv": sys.argv,
        "cwd": os.getcwd(),
        "marker": os.environ.get("WARM_TEST_MARKER"),
        "comm": Path(f"/proc/{os.getpid()}/comm").read_text().strip(),
        "random": random.random(),
        "numpy_random": float(numpy.random.random()),
        "deploy_loaded": sorted(n for n in sys.modules if n.split(".")[0] == "deploy"),
        "path0": sys.path[0],
    }
    Path(path).write_text(json.dumps(seen))
    print("to stdout", flush=True)
    print("to stderr", file=sys.stderr, flush=True)


def _wait(path: str) -> None:
    def on_term(_signum: int, _frame: object) -> None:
        Path(f"{path}.term").write_text("term")
        sys.exit(3)

    signal.signal(signal.SIGTERM, on_term)
    Path(path).write_text(str(os.getpid()))
    time.sleep(120)


def main() -> None:
    """The ClientApp stand-in (see the module docstring)."""
    action, value = sys.argv[1], sys.argv[2]
    if action == "report":
        _report(value)
    elif action == "exit":
        sys.exit(int(value))
    elif action == "signal":
        os.kill(os.getpid(), int(value))
    elif action == "wait":
        _wait(value)


def supernode() -> None:
    """The SuperNode stand-in (see the module docstring)."""
    keys = ("PATH", "QFL_WARM_SOCKET", "QFL_WARM_COLD")
    Path(sys.argv[1]).write_text(json.dumps({key: os.environ.get(key) for key in keys}))
    if sys.argv[2:3] == ["exit"]:
        sys.exit(int(sys.argv[3]))
    time.sleep(300)


if __name__ == "__main__":
    supernode()
