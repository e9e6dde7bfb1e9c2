"""``flower-supernode`` that looks for messages more often than every 3 s.

Flower 1.41's SuperNode asks the SuperLink for a message, and when there is none it
sleeps 3 s before asking again (``start_client_internal``: ``time.sleep(3)``, not
configurable). A message sent just after a look therefore waits up to 3 s, and a round
waits for its slowest node's look. ``python -m deploy.warm --pull-interval S -- flower-supernode
...`` runs the SuperNode through this module, which makes that one sleep ``S`` seconds and
changes nothing else (every other sleep and clock in the module is the real one).

It reaches into Flower's code, so it applies only where that code is what it expects:
Flower 1.41 with ``time.sleep(3)`` in the SuperNode's loop. Anywhere else it says so on
stderr and runs the SuperNode unchanged. Each look is one request to the SuperLink:
``S = 0.5`` means 2 requests a second per SuperNode instead of one every 3 s.
"""

from __future__ import annotations

import inspect
import math
import sys
import time
import types
from collections.abc import Sequence

FLOWER_SLEEP = 3
"""The seconds Flower 1.41's SuperNode sleeps after a pull that found no message."""
MIN_INTERVAL, MAX_INTERVAL = 0.05, 3.0


def check_interval(seconds: float) -> float:
    """``seconds`` if it is a pull interval this module accepts, else ValueError."""
    if not (math.isfinite(seconds) and MIN_INTERVAL <= seconds <= MAX_INTERVAL):
        raise ValueError(
            f"--pull-interval {seconds} is not allowed; use {MIN_INTERVAL} to {MAX_INTERVAL} s"
        )
    return seconds


class _Clock(types.SimpleNamespace):
    """The ``time`` module as the SuperNode's loop sees it: its 3 s sleep shortened."""

    def __init__(self, interval: float) -> None:
        super().__init__()
        self.interval = interval

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        time.sleep(self.interval if seconds == FLOWER_SLEEP else seconds)


def install(interval: float) -> str | None:
    """Shorten the SuperNode's idle sleep to ``interval``; the reason if it cannot."""
    import flwr
    from flwr.supernode import start_client_internal as loop

    version = getattr(flwr, "__version__", "?")
    if not version.startswith("1.41."):
        return f"Flower {version} is not 1.41"
    try:
        source = inspect.getsource(loop.start_client_internal)
    except (OSError, TypeError):
        return "the SuperNode's loop has no source to check"
    if f"time.sleep({FLOWER_SLEEP})" not in source or getattr(loop, "time", None) is not time:
        return "the SuperNode's loop is not the one this was written for"
    loop.time = _Clock(interval)  # type: ignore[assignment]
    return None


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m deploy.pull SECONDS flower-supernode ARGS``: run the SuperNode."""
    args = list(sys.argv[1:] if argv is None else argv)
    interval = check_interval(float(args[0]))
    reason = install(interval)
    if reason:
        print(f"deploy.pull: pull interval left at Flower's {FLOWER_SLEEP} s ({reason})",
              file=sys.stderr, flush=True)
    from flwr.supernode.cli.flower_supernode import flower_supernode

    sys.argv = args[1:]
    flower_supernode()


if __name__ == "__main__":
    main()
