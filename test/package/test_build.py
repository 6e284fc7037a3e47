"""The package builds the two documented ways, and setup fails loudly instead of half-way."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(sys.prefix)


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line]


@pytest.mark.slow
def test_colcon_build_in_a_workspace(tmp_path: Path) -> None:
    """`colcon build` of the repository as src/internvla_ros, then the installed package imports."""
    colcon = shutil.which("colcon", path=str(VENV / "bin"))
    if colcon is None:
        pytest.skip("colcon is not installed in this environment (pip install -e .[ros-wheels])")
    package = tmp_path / "src" / "internvla_ros"
    for name in tracked_files():
        target = package / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    env = dict(os.environ, AMENT_PREFIX_PATH=str(VENV), CMAKE_PREFIX_PATH=str(VENV))
    env["PATH"] = f"{VENV / 'bin'}{os.pathsep}{env['PATH']}"
    result = subprocess.run([colcon, "build", "--event-handlers", "console_direct-"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    install = tmp_path / "install" / "internvla_ros"
    for executable in ("policy_node", "sim_robot", "internvla"):
        assert os.access(install / "lib" / "internvla_ros" / executable, os.X_OK), executable
    for data in ("package.xml", "launch", "config"):
        assert (install / "share" / "internvla_ros" / data).exists(), data
    site = next((install / "lib").glob("python3*/site-packages"))
    # The policy registry: importlib.metadata reads the entry points from the installed dist-info.
    dist_info = next(site.glob("internvla_ros-*.dist-info"))
    assert "test_sine = internvla_ros.runtime.test_policies:sine_policy" in (dist_info / "entry_points.txt").read_text()
    probe = ("import internvla_ros, internvla_ros.msg as m; "
             "print(internvla_ros.__file__); print(m.ActionChunk.__name__)")
    # Run from the workspace so the editable checkout does not shadow the installed copy.
    out = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(site)!r}); {probe}"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0].startswith(str(site)), out
    assert out[1] == "ActionChunk"


def run_setup(path: str, check_only: bool = False) -> subprocess.CompletedProcess[str]:
    env = {"PATH": path, "HOME": os.environ.get("HOME", "/tmp"), "INTERNVLA_SETUP_CHECK_ONLY": str(int(check_only))}
    bash = shutil.which("bash") or "/bin/bash"
    return subprocess.run([bash, str(ROOT / "scripts" / "setup.sh")], env=env, capture_output=True, text=True,
                          timeout=120)


def test_setup_names_a_missing_tool(tmp_path: Path) -> None:
    """With cmake missing from PATH, setup stops before touching .venv and says what to install."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("python3", "make", "cc", "c++", "sha256sum", "cut", "cat", "dirname", "rm", "mkdir"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    result = run_setup(str(bin_dir))
    assert result.returncode != 0
    assert "'cmake' was not found" in result.stderr
    assert "apt-get install cmake" in result.stderr


def test_setup_is_fast_when_nothing_changed() -> None:
    """A second run on an unchanged tree only checks its stamp (the first run is `make test` itself)."""
    result = run_setup(os.environ["PATH"], check_only=True)
    assert result.returncode == 0, result.stderr
    assert "environment up to date" in result.stderr
