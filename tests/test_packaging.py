"""The package as users install it: requirements.txt (the Space's install) asks for exactly what
pyproject.toml declares, and a wheel built from the checkout holds the engine, its data and its
console scripts, and imports from an install outside the checkout."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT


def requirement_lines(path: Path) -> set[str]:
    """The requirements a pip requirements file names (comments, blanks and -r includes dropped),
    with their specifiers, spaces removed."""
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            names.add(re.sub(r"\s+", "", line))
    return names


def normalised(requirements) -> set[str]:
    return {re.sub(r"\s+", "", r) for r in requirements}


def test_requirements_txt_installs_the_pyproject_pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = normalised(project["dependencies"]) | normalised(project["optional-dependencies"]["app"])
    assert requirement_lines(ROOT / "requirements.txt") == declared


def test_dev_requirements_hold_the_dev_extra():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    dev = {r for r in normalised(project["optional-dependencies"]["dev"]) if not r.startswith("saliency-lab")}
    ray = normalised(project["optional-dependencies"]["ray"])
    assert "-r requirements.txt" in (ROOT / "requirements-dev.txt").read_text()
    assert requirement_lines(ROOT / "requirements-dev.txt") == dev | ray


@pytest.mark.slow
def test_the_wheel_holds_the_package_and_imports_outside_the_checkout(tmp_path):
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = wheels.glob("saliency_lab-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    assert {"explainers/__init__.py", "explainers/api.py", "explainers/models/imagenet_classes.txt"} <= names
    assert "saliency-lab = explainers.__main__:main" in entry_points
    assert "saliency-lab-evaluate = explainers.evaluate.__main__:main" in entry_points
    assert not any(n.startswith(("tests/", "bench/")) for n in names)

    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    probe = (
        "import explainers, explainers.models.bundled as b; "
        "print(explainers.__file__); print(explainers.__version__); print(b.CLASS_NAMES_FILE.is_file())"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    where, version, classes = done.stdout.split()
    assert Path(where).is_relative_to(target) and not Path(where).is_relative_to(ROOT)
    assert f'__version__ = "{version}"' in (ROOT / "explainers" / "_version.py").read_text()
    assert classes == "True"
