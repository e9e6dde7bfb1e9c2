"""TLS certificates, SuperNode authentication keys and the UAVs' QKD secrets, with `cryptography`.

Run ``python -m deploy.certs <out-dir> [--name HOST ...] [--supernodes N] [--qkd-secrets N]``.
It writes

- ``ca.crt``, ``ca.key``: a self-signed certificate authority (keep ``ca.key`` private;
  it signs the server certificate and nothing else here);
- ``server.pem``, ``server.key``: the SuperLink's certificate, signed by the CA, valid for
  ``127.0.0.1``, ``::1``, ``localhost`` and every ``--name`` (host names or IP addresses);
- ``supernode-<i>`` / ``supernode-<i>.pub`` for ``i`` in ``0 .. N-1``: one ECDSA P-384 key
  pair per SuperNode, the private key in OpenSSH format (``flower-supernode
  --auth-supernode-private-key``) and the public key as an OpenSSH line (``flwr supernode
  register``), the formats Flower 1.41 reads;
- ``qkd-secret-<uav-id>`` for each UAV of ``--qkd-secrets N`` (``uav-0`` .. ``uav-<N-1>``,
  the ids node config ``partition-id`` maps to in the shipped topologies) and of each
  ``--qkd-uav ID``: that UAV's pre-shared secret with the base station for the ``qkd``
  relay channel (32 random bytes as hex, mode 0600; :mod:`relay.shared_secret` reads it).
  The base station gets every one; UAV ``ID`` gets its own and no other.

The SuperLink takes ``--ssl-ca-certfile ca.crt --ssl-certfile server.pem --ssl-keyfile
server.key``; SuperNodes and the ``flwr`` CLI take ``ca.crt`` as their root certificate.

Nothing is replaced silently: when any of these files already exists (a new ``ca.key``
would make every certificate the old one signed untrusted, a new SuperNode key would no
longer match its registration) the command refuses, naming the files, unless given
``--force``. A ``--name`` must be an IP address or a valid DNS host name.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import re
import secrets
from dataclasses import astuple, dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_NAMES = ("127.0.0.1", "::1", "localhost")
"""Subject alternative names every server certificate carries (a local federation)."""
TLS_CURVE = ec.SECP256R1()
"""Curve of the CA and server keys: P-256, accepted by every TLS stack."""
NODE_CURVE = ec.SECP384R1()
"""Curve of the SuperNode authentication keys: P-384, as Flower's documentation uses."""
QKD_SECRET_PREFIX = "qkd-secret-"
"""A UAV's QKD secret file is ``qkd-secret-<uav-id>``: the name ``relay.shared_secret``
reads (deploy imports nothing of ours; tests/test_certs.py checks the two agree)."""
QKD_SECRET_BYTES = 32
"""Length of a UAV's QKD secret."""
_UAV_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", re.IGNORECASE)
"""One label of a host name (RFC 1123): letters, digits, inner hyphens, 1 to 63 long."""


@dataclass(frozen=True)
class TlsFiles:
    """Paths of the files a TLS-enabled SuperLink and its clients need."""

    ca_certificate: Path
    ca_key: Path
    server_certificate: Path
    server_key: Path


@dataclass(frozen=True)
class NodeKeyFiles:
    """Paths of one SuperNode's authentication key pair."""

    private_key: Path
    public_key: Path


def server_name(name: str) -> x509.GeneralName:
    """``name`` as a subject alternative name: an IP address, else a DNS host name.

    Raises ``ValueError`` naming ``name`` when it is neither: a host name is labels of
    letters, digits and inner hyphens (1 to 63 characters each) joined by dots, at most
    253 characters, whose last label is not all digits (RFC 1123); no wildcards,
    underscores, spaces or trailing dot, and an internationalised name in its ASCII
    (``xn--``) form.
    """
    name = name.strip()
    if not name:
        raise ValueError("an empty server name is not allowed; give a host name or an IP")
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        labels = name.split(".")
        if (
            len(name) > 253
            or not all(_DNS_LABEL.fullmatch(label) for label in labels)
            or labels[-1].isdigit()
        ):
            raise ValueError(
                f"server name {name!r} is neither an IP address nor a valid DNS host name; "
                "use dot-separated labels of letters, digits and inner '-' (1-63 "
                "characters each, 253 in all, the last not all digits), or an IP address"
            ) from None
        return x509.DNSName(name.lower())
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        raise ValueError(f"server name {name!r}: an IPv6 scope (%...) is not allowed")
    return x509.IPAddress(address)


def _subject_alternative_names(names: list[str]) -> x509.SubjectAlternativeName:
    """IP addresses as IP entries, everything else as DNS names; duplicates dropped."""
    entries: list[x509.GeneralName] = []
    for name in names:
        if (entry := server_name(name)) not in entries:
            entries.append(entry)
    return x509.SubjectAlternativeName(entries)


def _refuse_existing(paths: list[Path]) -> None:
    """Raise ``FileExistsError`` naming the first of ``paths`` that exists."""
    if existing := [path for path in paths if path.exists() or path.is_symlink()]:
        others = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise FileExistsError(f"{existing[0]} already exists{others}; not replaced")


def _write_private(path: Path, data: bytes, replace: bool) -> None:
    """Write a secret readable by its owner only; never over an existing file unless
    ``replace`` (``O_EXCL``: not even one that appeared since it was checked)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if replace else os.O_EXCL)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    path.chmod(0o600)


def _pem_private_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _ca_certificate(
    ca_key: ec.EllipticCurvePrivateKey,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
) -> tuple[x509.Name, x509.Certificate]:
    """The CA's name and its self-signed certificate (signs certificates, nothing else)."""
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sagin-qfl"),
            x509.NameAttribute(NameOID.COMMON_NAME, "sagin-qfl federation CA"),
        ]
    )
    ca_certificate = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    return ca_name, ca_certificate


def _server_certificate(
    server_key: ec.EllipticCurvePrivateKey,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_name: x509.Name,
    names: x509.SubjectAlternativeName,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
) -> x509.Certificate:
    """The SuperLink's certificate for ``names``, signed by the CA (TLS server only)."""
    return (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sagin-qfl"),
                    x509.NameAttribute(NameOID.COMMON_NAME, "sagin-qfl SuperLink"),
                ]
            )
        )
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=True, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(names, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )


def tls_file_paths(out_dir: Path | str) -> TlsFiles:
    """Where :func:`generate_tls_files` writes in ``out_dir``."""
    out = Path(out_dir)
    return TlsFiles(
        ca_certificate=out / "ca.crt",
        ca_key=out / "ca.key",
        server_certificate=out / "server.pem",
        server_key=out / "server.key",
    )


def generate_tls_files(
    out_dir: Path | str, names: list[str] | None = None, days: int = 365, replace: bool = False
) -> TlsFiles:
    """Create a CA and a SuperLink server certificate signed by it.

    Parameters
    ----------
    out_dir : Path or str
        Folder for ``ca.crt``, ``ca.key``, ``server.pem`` and ``server.key`` (created if
        missing).
    names : list of str, optional
        Host names or IP addresses the SuperLink is reached at, besides ``127.0.0.1``,
        ``::1`` and ``localhost``.
    days : int
        Validity of both certificates, from now.
    replace : bool
        Replace existing files; without it an existing one raises ``FileExistsError``
        (before anything is written).

    Returns
    -------
    TlsFiles
        Paths of the four files.
    """
    if days < 1:
        raise ValueError(f"certificate validity days={days} is not allowed; use 1 or more")
    files = tls_file_paths(out_dir)
    if not replace:
        # The CA key first: replacing it untrusts everything it signed.
        _refuse_existing([files.ca_key, files.ca_certificate, files.server_key,
                          files.server_certificate])
    alternative_names = _subject_alternative_names([*DEFAULT_NAMES, *(names or [])])
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    # Backdate a little: a machine whose clock lags by minutes still accepts the chain.
    not_before, not_after = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=days)

    ca_key = ec.generate_private_key(TLS_CURVE)
    ca_name, ca_certificate = _ca_certificate(ca_key, not_before, not_after)
    server_key = ec.generate_private_key(TLS_CURVE)
    server_certificate = _server_certificate(
        server_key, ca_key, ca_name, alternative_names, not_before, not_after
    )
    files.ca_certificate.write_bytes(ca_certificate.public_bytes(serialization.Encoding.PEM))
    _write_private(files.ca_key, _pem_private_key(ca_key), replace)
    files.server_certificate.write_bytes(
        server_certificate.public_bytes(serialization.Encoding.PEM)
    )
    _write_private(files.server_key, _pem_private_key(server_key), replace)
    return files


def node_key_paths(out_dir: Path | str, name: str) -> NodeKeyFiles:
    """Where :func:`generate_node_keys` writes key pair ``name`` in ``out_dir``."""
    return NodeKeyFiles(private_key=Path(out_dir) / name, public_key=Path(out_dir) / f"{name}.pub")


def generate_node_keys(out_dir: Path | str, name: str, replace: bool = False) -> NodeKeyFiles:
    """Create one SuperNode authentication key pair in the formats Flower 1.41 reads.

    Parameters
    ----------
    out_dir : Path or str
        Folder for the two files (created if missing).
    name : str
        File name of the private key; the public key gets ``.pub`` appended.
    replace : bool
        Replace an existing pair; without it an existing file raises ``FileExistsError``.

    Returns
    -------
    NodeKeyFiles
        Paths of the OpenSSH private key and the OpenSSH public key line.
    """
    files = node_key_paths(out_dir, name)
    if not replace:
        _refuse_existing([files.private_key, files.public_key])
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(NODE_CURVE)
    _write_private(
        files.private_key,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
        replace,
    )
    files.public_key.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        + f" {name}\n".encode()
    )
    return files


def _check_uav_ids(uav_ids: list[str]) -> None:
    for uav_id in uav_ids:
        if not _UAV_ID.match(uav_id):
            raise ValueError(
                f"UAV id {uav_id!r} is not allowed in a secret file name; use letters, "
                "digits, '.', '_' or '-' (at most 128)"
            )
    if len(set(uav_ids)) != len(uav_ids):
        raise ValueError(f"UAV ids are given more than once: {', '.join(uav_ids)}")


def qkd_secret_paths(out_dir: Path | str, uav_ids: list[str]) -> list[Path]:
    """Where :func:`generate_qkd_secrets` writes each UAV's secret."""
    return [Path(out_dir) / f"{QKD_SECRET_PREFIX}{uav_id}" for uav_id in uav_ids]


def generate_qkd_secrets(
    out_dir: Path | str, uav_ids: list[str], replace: bool = False
) -> list[Path]:
    """One pre-shared QKD secret per UAV: ``qkd-secret-<uav-id>`` in ``out_dir``.

    Parameters
    ----------
    out_dir : Path or str
        Folder for the files (created if missing).
    uav_ids : list of str
        UAV ids of the topology (letters, digits, ``.``, ``_``, ``-``).
    replace : bool
        Replace secret files that exist; otherwise an existing one is refused
        (``FileExistsError``) before any is written.

    Returns
    -------
    list of Path
        The files, mode 0600, each 32 random bytes as hex: copy every one to the base
        station and each to its own UAV only.
    """
    _check_uav_ids(uav_ids)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    paths = qkd_secret_paths(out_dir, uav_ids)
    if not replace:
        _refuse_existing(paths)
    for path in paths:
        _write_private(path, (secrets.token_hex(QKD_SECRET_BYTES) + "\n").encode(), replace)
    return paths


def generate_supernode_keys(
    out_dir: Path | str, count: int, replace: bool = False
) -> list[NodeKeyFiles]:
    """Key pairs ``supernode-0`` .. ``supernode-<count-1>`` in ``out_dir``."""
    if count < 0:
        raise ValueError(f"supernodes={count} is not allowed; use 0 or more")
    return [
        generate_node_keys(out_dir, f"supernode-{index}", replace) for index in range(count)
    ]


def main(argv: list[str] | None = None) -> None:
    """Command line entry point: ``python -m deploy.certs <out-dir> ...``."""
    parser = argparse.ArgumentParser(
        prog="python -m deploy.certs",
        description="Generate a CA, a SuperLink TLS certificate, SuperNode key pairs and the "
        "UAVs' pre-shared QKD secrets.",
    )
    parser.add_argument("out_dir", type=Path, help="folder for the generated files")
    parser.add_argument(
        "--name",
        action="append",
        default=[],
        help="extra host name or IP address of the SuperLink (repeatable); "
        "127.0.0.1, ::1 and localhost are always included",
    )
    parser.add_argument(
        "--supernodes", type=int, default=0, help="SuperNode key pairs to generate (default 0)"
    )
    parser.add_argument(
        "--qkd-secrets", type=int, default=0, metavar="N",
        help="pre-shared QKD secrets qkd-secret-uav-<i> for UAVs uav-0 .. uav-<N-1> "
        "(default 0)",
    )
    parser.add_argument(
        "--qkd-uav", action="append", default=[], metavar="ID",
        help="a pre-shared QKD secret qkd-secret-<ID> for UAV ID of the topology (repeatable)",
    )
    parser.add_argument("--days", type=int, default=365, help="certificate validity in days")
    parser.add_argument(
        "--force", action="store_true",
        help="replace files that exist (a new CA untrusts everything the old one signed)",
    )
    args = parser.parse_args(argv)
    if args.qkd_secrets < 0:
        parser.error(f"--qkd-secrets {args.qkd_secrets} is not allowed; use 0 or more")
    uav_ids = [f"uav-{index}" for index in range(args.qkd_secrets)] + args.qkd_uav
    try:
        if args.supernodes < 0:
            raise ValueError(f"--supernodes {args.supernodes} is not allowed; use 0 or more")
        _check_uav_ids(uav_ids)
        if not args.force:  # every file checked before the first is written
            tls_paths = tls_file_paths(args.out_dir)
            _refuse_existing([
                tls_paths.ca_key, tls_paths.ca_certificate, tls_paths.server_key,
                tls_paths.server_certificate,
                *(path for index in range(args.supernodes) for path in
                  astuple(node_key_paths(args.out_dir, f"supernode-{index}"))),
                *qkd_secret_paths(args.out_dir, uav_ids),
            ])
        tls = generate_tls_files(args.out_dir, args.name, args.days, replace=args.force)
        nodes = generate_supernode_keys(args.out_dir, args.supernodes, replace=args.force)
        qkd = generate_qkd_secrets(args.out_dir, uav_ids, replace=args.force)
    except FileExistsError as err:
        parser.error(
            f"{err}: a new CA key untrusts every certificate the old one signed, and a new "
            "SuperNode key no longer matches its registration; use --force to replace "
            "them, or another folder"
        )
    except (ValueError, OSError) as err:
        parser.error(str(err))
    print(f"CA certificate      {tls.ca_certificate}")
    print(f"CA key (private)    {tls.ca_key}")
    print(f"SuperLink cert      {tls.server_certificate}")
    print(f"SuperLink key       {tls.server_key}")
    for node in nodes:
        print(f"SuperNode key pair  {node.private_key} / {node.public_key.name}")
    for path in qkd:
        print(f"QKD secret (private) {path}")


if __name__ == "__main__":
    main()
