"""Where a local federation lives: free ports, its ``FLWR_HOME``, its copy of the app.

- :func:`free_port` picks TCP ports on 127.0.0.1 for the SuperLink and SuperNodes, away
  from the local-simulation SuperLink's :data:`RESERVED_PORTS`;
- :func:`superlink_command` and :func:`supernode_command` are the command lines of the
  local SuperLink and of a SuperNode connecting to it;
- :func:`write_connection` writes ``FLWR_HOME/config.toml``, naming the SuperLink
  connection :data:`CONNECTION` that ``flwr run`` and ``flwr supernode`` use;
- :func:`copy_app` copies the app (:data:`APP_PARTS`) that ``flwr run`` builds its FAB
  from, since ``flwr run`` rewrites the ``pyproject.toml`` it is given.
"""

from __future__ import annotations

import random
import shutil
import socket
from pathlib import Path

from deploy.certs import TlsFiles
from deploy.processes import FederationError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
APP_PARTS = (
    "pyproject.toml", "README.md", "task", "client", "server", "strategies", "quantum", "relay",
    "data/MNIST/raw", "data/FashionMNIST/raw",
)
"""What ``flwr run`` needs: the config and the packages it bundles (FAB), and the bundled
MNIST and Fashion-MNIST archives, which the FAB leaves out and the apps find in the folder
the run was started from (``data/`` there), as in a checkout."""
CONNECTION = "local-deployment"
"""Name of the SuperLink connection in the federation's ``FLWR_HOME/config.toml``."""
RESERVED_PORTS = frozenset(range(39091, 39094))
"""Ports of the local-simulation SuperLink that ``flwr run .`` starts; never taken here."""
HOST = "127.0.0.1"

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


def port_open(host: str, port: int) -> bool:
    """True when something accepts TCP connections at ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, port)) == 0


def superlink_command(port: int, tls_files: TlsFiles | None, auth: bool) -> list[str]:
    """``flower-superlink`` on :data:`HOST`, deployment runtime, TLS when ``tls_files``."""
    command = [
        "flower-superlink",
        "--host", HOST,
        "--port", str(port),
        "--disable-runtime-dependency-installation",
        # In-memory state (Flower's default): a database file made 20 SuperNodes'
        # concurrent uploads fail with "database is locked" on this machine.
    ]
    if tls_files:
        command += [
            "--ssl-ca-certfile", str(tls_files.ca_certificate),
            "--ssl-certfile", str(tls_files.server_certificate),
            "--ssl-keyfile", str(tls_files.server_key),
        ]
    else:
        command.append("--insecure")
    if auth:
        command.append("--enable-supernode-auth")
    return command


def supernode_command(
    superlink: str,
    node_config: str,
    port: int,
    *,
    tls: bool,
    root_certificates: Path | str | None,
    private_key: Path | None,
    max_retries: int | None,
) -> list[str]:
    """``flower-supernode`` connecting to ``superlink``, its ClientAppIo API on ``port``.

    With TLS, ``root_certificates`` (when given) is the CA that verifies the SuperLink.
    """
    command = [
        "flower-supernode",
        "--superlink", superlink,
        "--node-config", node_config,
        "--host", HOST,
        "--port", str(port),
    ]
    if not tls:
        command.append("--insecure")
    elif root_certificates:
        command += ["--root-certificates", str(root_certificates)]
    if private_key:
        command += ["--auth-supernode-private-key", str(private_key)]
    if max_retries is not None:
        command += ["--max-retries", str(max_retries)]
    return command


def write_connection(
    flwr_home: Path, address: str, *, tls: bool, ca_certificate: Path | str | None
) -> None:
    """Write ``flwr_home/config.toml``: the default connection, :data:`CONNECTION`.

    ``tls=False`` marks it insecure; with TLS, ``ca_certificate`` (when given) is the
    root certificate that verifies the SuperLink at ``address``.
    """
    lines = ["[superlink]", f'default = "{CONNECTION}"', "", f"[superlink.{CONNECTION}]"]
    lines.append(f'address = "{address}"')
    if not tls:
        lines.append("insecure = true")
    elif ca_certificate:
        lines.append(f'root-certificates = "{Path(ca_certificate).resolve()}"')
    (flwr_home / "config.toml").write_text("\n".join(lines) + "\n")


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
