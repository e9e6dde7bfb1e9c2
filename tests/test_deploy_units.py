"""Small parts of deploy/ that need no process: the PATH Flower's processes start from."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from deploy.federation import LocalFederation
from deploy.processes import interpreter_first_path


def test_this_interpreters_bin_folder_comes_first_once():
    own = str(Path(sys.executable).parent)
    path = interpreter_first_path(os.pathsep.join(["/opt/shims", own, "/usr/bin", ""]))
    assert path.split(os.pathsep) == [own, "/opt/shims", "/usr/bin"]


def test_a_federations_processes_find_flowers_commands_beside_this_interpreter(tmp_path):
    federation = LocalFederation(tmp_path)
    found = shutil.which("flwr-clientapp", path=federation.env["PATH"])
    assert found is not None and Path(found).parent == Path(sys.executable).parent
    # ... and that command runs in this environment.
    head = Path(found).read_text().splitlines()[0]
    interpreter = head.removeprefix("#!").split()[0]
    out = subprocess.run([interpreter, "-c", "import sys; print(sys.prefix)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == sys.prefix
