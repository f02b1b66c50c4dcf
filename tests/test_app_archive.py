"""The Flower app archive (FAB) holds the app's packages and settings, not the benchmarks' results or the tests."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_app_archive_holds_only_the_app(tmp_path):
    flwr = Path(sys.executable).parent / "flwr"
    done = subprocess.run([str(flwr), "build", "--app", str(ROOT)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    (fab,) = tmp_path.glob("*.fab")
    tops = {name.split("/")[0] for name in zipfile.ZipFile(fab).namelist()}
    assert {"client", "server", "common", "pyproject.toml"} <= tops
    assert not tops & {"bench", "tests", "deploy"}


def test_the_app_fedsynth_simulate_writes_archives_only_its_settings(tmp_path):
    from fedsynth.common.simulation import write_app_variant

    app = write_app_variant(tmp_path)
    flwr = Path(sys.executable).parent / "flwr"
    done = subprocess.run([str(flwr), "build", "--app", str(app)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    (fab,) = tmp_path.glob("*.fab")
    assert {name.split("/")[0] for name in zipfile.ZipFile(fab).namelist()} == {"pyproject.toml", ".info"}
