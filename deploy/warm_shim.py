"""``flwr-clientapp`` as a SuperNode's SuperExec finds it under ``python -m deploy.warm``.

:mod:`deploy.warm` copies this file, under the name ``flwr-clientapp`` and with a shebang
for its own interpreter (``-IS``: no site packages, so it starts in milliseconds),
into a private folder that it puts first on the SuperNode's ``PATH``. Each time the
SuperExec starts a ClientApp, this script hands its arguments, working folder,
environment and standard streams to the launcher over the Unix socket named by
``QFL_WARM_SOCKET``; the launcher forks a ClientApp whose imports are already done and
answers with its PID, then with its wait status when it ends. This process stands for
the ClientApp meanwhile: SIGTERM, SIGINT, SIGHUP and SIGQUIT sent to it are passed on,
it ends with the ClientApp's exit code (or dies of the ClientApp's signal), and if it is
killed the launcher kills the ClientApp.

Without a launcher (the variable unset, nothing listening, or the launcher closing
before it forked), it says so on stderr and becomes the real ``flwr-clientapp``
(``QFL_WARM_COLD``), started cold: a message is never lost to a missing launcher.

Standard library only: this file must not import the project or any package.
"""

import array
import contextlib
import json
import os
import signal
import socket
import sys

SOCKET_ENV = "QFL_WARM_SOCKET"
COLD_ENV = "QFL_WARM_COLD"
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)


def start_cold(reason: str) -> None:
    """Replace this process with the real ``flwr-clientapp``."""
    real = os.environ.get(COLD_ENV, "")
    sys.stderr.write(f"flwr-clientapp: no warm launcher ({reason}); starting cold\n")
    sys.stderr.flush()
    if not real:
        sys.stderr.write(f"flwr-clientapp: {COLD_ENV} is not set either; cannot start\n")
        sys.exit(1)
    os.execv(real, [real, *sys.argv[1:]])


def request(sock: socket.socket) -> None:
    """Send the launch request: a length-prefixed JSON header with fds 0, 1 and 2."""
    header = json.dumps(
        {"argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ)}
    ).encode()
    fds = array.array("i", [0, 1, 2])
    sock.sendmsg(
        [len(header).to_bytes(4, "big") + header],
        [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())],
    )


def end_as(status: int) -> None:
    """End this process as the ClientApp ended (wait status ``status``)."""
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        with contextlib.suppress(OSError, ValueError):  # SIGKILL has no handler to reset
            signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    sys.exit(os.waitstatus_to_exitcode(status))


def main() -> None:
    """Launch the ClientApp warm, or cold when no launcher answers."""
    path = os.environ.get(SOCKET_ENV, "")
    if not path:
        start_cold(f"{SOCKET_ENV} is not set")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        request(sock)
    except OSError as err:
        sock.close()
        start_cold(f"{path}: {err.strerror or err}")
    replies = sock.makefile("rb")
    first = replies.readline()
    if not first.strip():  # the launcher closed before it forked: nothing started
        start_cold("the launcher closed the connection")
    pid = int(first)

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    for signum in FORWARDED:
        signal.signal(signum, forward)
    last = replies.readline()
    if not last.strip():
        sys.stderr.write(
            f"flwr-clientapp: the warm launcher ended before ClientApp {pid}; "
            "its exit status is unknown\n"
        )
        sys.exit(1)
    end_as(int(last))


if __name__ == "__main__":
    main()
