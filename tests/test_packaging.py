"""fedsynth installs as one import package: its wheel holds only `fedsynth`, and runs from a fresh environment."""

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from importlib.metadata import distribution
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VERSION = f"python{sys.version_info.major}.{sys.version_info.minor}"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)]
    # this environment's setuptools when it can build wheels itself (≥ 70.1), else pip's isolated build
    done = subprocess.run(build + ["--no-build-isolation"], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        done = subprocess.run(build, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    (built,) = out.glob("fedsynth-*.whl")
    return built


@pytest.fixture(scope="module")
def fresh_env(wheel, tmp_path_factory) -> Path:
    """A new venv holding the wheel; the dependencies come from this environment's site-packages as a plain path
    (its .pth files, the editable fedsynth among them, are not run), and Flower's commands run on the new python."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = venv / "lib" / VERSION / "site-packages"
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                           "--no-deps", "--no-index", str(wheel)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    for entry in distribution("flwr").entry_points:
        if entry.group == "console_scripts":
            module, _, attribute = entry.value.partition(":")
            script = venv / "bin" / entry.name
            script.write_text(f"#!{venv / 'bin' / 'python'}\nimport sys\nfrom {module} import {attribute}\n"
                              f"sys.exit({attribute}())\n")
            script.chmod(0o755)
    return venv


def test_the_wheel_installs_one_top_level_package_with_the_app_settings(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {"fedsynth", "fedsynth-0.1.0.dist-info"}
    sources = {f"fedsynth/{p.relative_to(ROOT)}" for folder in ("client", "server", "common")
               for p in (ROOT / folder).rglob("*.py")}
    assert sources <= set(names), f"left out of the wheel: {sorted(sources - set(names))[:5]}"
    settings = zipfile.ZipFile(wheel).read("fedsynth/common/flower_app.toml").decode()
    assert settings == (ROOT / "pyproject.toml").read_text()  # the link to pyproject.toml, resolved


def _env(venv: Path, home: Path) -> dict[str, str]:
    return {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", "FEDSYNTH_HOME": str(home)}


def test_the_installed_package_is_imported_and_no_top_level_client_server_or_common(fresh_env, tmp_path):
    code = ("import importlib.util, fedsynth.common.claim as c; print(c.__file__); "
            "print([importlib.util.find_spec(n) is None for n in ('client', 'server', 'common')])")
    done = subprocess.run([str(fresh_env / "bin" / "python"), "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    where, absent = done.stdout.splitlines()
    assert where.startswith(str(fresh_env)) and absent == "[True, True, True]"
    shown = subprocess.run([str(fresh_env / "bin" / "fedsynth"), "--help"], cwd=tmp_path, capture_output=True,
                           text=True, timeout=120)
    assert shown.returncode == 0 and "simulate" in shown.stdout


@pytest.mark.slow
def test_fedsynth_simulate_runs_from_the_wheel(fresh_env, tmp_path):
    """No checkout, no editable install: the app's settings and code come from the installed package."""
    out = tmp_path / "out"
    config = ('dataset="mnist5k" front-end="none" steps=2 inner-steps=2 width=8 ipc=1 eval-epochs=5 eval-width=8 '
              f'connect-timeout=30 timeout=600 epsilon=8.0 min-sites=2 expected-sites=2 output-dir="{out}" '
              f'keys-dir="{tmp_path / "keys"}" sites-dir="{tmp_path / "sites"}" '
              f'anchors-file="{tmp_path / "anchors.json"}"')
    done = subprocess.run([str(fresh_env / "bin" / "fedsynth"), "simulate", "--sites", "2", "--run-config", config],
                          cwd=tmp_path, env=_env(fresh_env, tmp_path / "home"), capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["sites_accepted"] == 2
