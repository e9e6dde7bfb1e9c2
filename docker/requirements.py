"""Print the image's requirements, one per line, read from ``pyproject.toml``.

``python docker/requirements.py [pyproject.toml] [--extra server]`` prints the build
backend's requirements (``[build-system] requires``, so the project itself installs
offline with ``--no-build-isolation``), the base dependencies and those of each named
extra, with the project's references to its own extras (``sagin-qfl[server]``) expanded.

The Dockerfile installs this list before it copies the source, so the big dependency
layer is rebuilt only when the list changes; CI downloads the same list into its wheel
folder. ``pyproject.toml`` stays the one place where versions are pinned.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

IMAGE_EXTRAS = ("server",)
"""Extras of the one image that serves every role: the base set is the UAV's, ``server``
adds the ServerApp's plotting. No Ray: the deployment runtime does not use it."""


def requirements(pyproject: Path, extras: tuple[str, ...] = IMAGE_EXTRAS) -> list[str]:
    """Requirement strings of the build backend, the base set and ``extras``.

    Parameters
    ----------
    pyproject : Path
        The project's ``pyproject.toml``.
    extras : tuple of str
        Optional-dependency groups to add; self-references are followed.

    Returns
    -------
    list of str
        Requirements in file order, without duplicates.
    """
    data = tomllib.loads(pyproject.read_text())
    project = data["project"]
    name = project["name"]
    groups = project.get("optional-dependencies", {})
    self_reference = re.compile(rf"^{re.escape(name)}\[(?P<extras>[^\]]+)\]$")
    found: list[str] = [*data.get("build-system", {}).get("requires", [])]
    found += project.get("dependencies", [])
    pending, seen = list(extras), set()
    while pending:
        extra = pending.pop(0)
        if extra in seen:
            continue
        if extra not in groups:
            raise SystemExit(
                f"extra {extra!r} is not in {pyproject}; use one of {sorted(groups)}"
            )
        seen.add(extra)
        for requirement in groups[extra]:
            if match := self_reference.match(requirement.replace(" ", "")):
                pending += match["extras"].split(",")
            else:
                found.append(requirement)
    return list(dict.fromkeys(found))


def main(argv: list[str] | None = None) -> int:
    """Command line: print the requirements, one per line."""
    parser = argparse.ArgumentParser(prog="python docker/requirements.py", description=__doc__)
    parser.add_argument("pyproject", nargs="?", type=Path, default=Path("pyproject.toml"))
    parser.add_argument(
        "--extra", action="append", help=f"extra to include (default: {', '.join(IMAGE_EXTRAS)})"
    )
    args = parser.parse_args(argv)
    extras = tuple(args.extra) if args.extra else IMAGE_EXTRAS
    sys.stdout.write("".join(f"{line}\n" for line in requirements(args.pyproject, extras)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
