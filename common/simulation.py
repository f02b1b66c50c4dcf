"""Run the Flower app as a local simulation with nothing downloaded and nothing left running.

`flwr run` against Flower's managed `:local:` SuperLink would install the app's
dependencies (torch among them) into a fresh environment on every run. Instead this
starts a private `flower-superlink --simulation --disable-runtime-dependency-installation`
on free loopback ports with its own FLWR_HOME, submits the app with `flwr run . <conn>
--federation-config num-supernodes=N --stream`, and stops the SuperLink's whole process
group when the run ends, whatever happened.
"""

from __future__ import annotations

import collections
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

CONNECTION = "fedsynth-sim"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flower_env(flwr_home: Path) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "FLWR_HOME": str(flwr_home), "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
            "FLWR_DISABLE_UPDATE_CHECK": "1"}


def _wait_healthy(port: int, process: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"flower-superlink exited with {process.returncode}; see {log}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=0.5).is_success:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"flower-superlink did not become healthy in {timeout:.0f}s; see {log}")


RUN_MARK = "FEDSYNTH_SIMULATION"  # set in the SuperLink's environment; every process it starts inherits it


def marked_processes(mark: str) -> list[int]:
    """Processes whose environment holds RUN_MARK=`mark`: the SuperLink's, even those that left its process
    group (the simulation and Ray start their own). Linux only: elsewhere none are found."""
    needle = f"{RUN_MARK}={mark}".encode() + b"\0"
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if needle in (entry / "environ").read_bytes() + b"\0" and int(entry.name) != os.getpid():
                found.append(int(entry.name))
        except (OSError, ValueError):
            continue
    return found


def stop_marked(mark: str, grace: float = 15.0) -> None:
    """SIGTERM every process marked `mark`, then SIGKILL those left after `grace` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = marked_processes(mark)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + grace
        while pids and marked_processes(mark) and time.monotonic() < deadline:
            time.sleep(0.5)


def stop_process_group(process: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left after `grace` seconds."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


@contextmanager
def simulation_superlink(flwr_home: Path) -> Iterator[dict[str, str]]:
    """A private simulation SuperLink; yields the environment in which `flwr run . fedsynth-sim` reaches it."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    http, control, fleet = free_port(), free_port(), free_port()
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n'
        f'[superlink.{CONNECTION}]\naddress = "127.0.0.1:{http}"\ninsecure = true\n'
    )
    mark = secrets.token_hex(8)
    env = {**flower_env(flwr_home), RUN_MARK: mark}
    log = flwr_home / "superlink.log"
    command = ["flower-superlink", "--insecure", "--simulation", "--disable-runtime-dependency-installation",
               "--isolation", "subprocess", "--host", "127.0.0.1", "--port", str(http),
               "--control-api-address", f"127.0.0.1:{control}", "--fleet-api-address", f"127.0.0.1:{fleet}",
               "--database", ":flwr-in-memory:"]
    with open(log, "ab") as sink:
        process = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_healthy(http, process, log)
        yield env
    finally:
        stop_process_group(process)
        stop_marked(mark)  # what left the group: the simulation and Ray's processes, if still running


def run_simulation(app_dir: Path, sites: int, run_config: str | None = None, flwr_home: Path | None = None,
                   timeout: float | None = None, federation_config: str | None = None, verbose: bool = True) -> int:
    """Simulate `sites` sites running the app in `app_dir`; returns `flwr run`'s exit status.
    `federation_config` adds Flower simulation settings, e.g. "client-resources-num-cpus=1"; without
    `verbose` only fedsynth's own lines are shown (Flower's and Ray's logs only when the run fails)."""
    with tempfile.TemporaryDirectory(prefix="fedsynth-flwr-") as tmp:
        home = Path(flwr_home) if flwr_home else Path(tmp)
        with simulation_superlink(home) as env:
            command = ["flwr", "run", str(app_dir), CONNECTION, "--federation-config",
                       f"num-supernodes={sites} {federation_config or ''}".strip(), "--stream"]
            if run_config:
                command += ["--run-config", run_config]
            code = _run_streaming(command, env, timeout, verbose)
            return code or run_status_code(env, CONNECTION)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def shown_line(line: str) -> str | None:
    """What a quiet run shows of one log line: fedsynth's own lines and tables, without Ray's or Flower's prefixes."""
    line = _ANSI.sub("", line.rstrip("\n"))
    if "[fedsynth]" in line:
        return line[line.index("[fedsynth]"):]
    return line if line.startswith("|") else None


def _run_streaming(command: list[str], env: dict[str, str], timeout: float | None, verbose: bool) -> int:
    """Run `command`, passing its output through (`verbose`) or only fedsynth's lines; on failure the last
    lines are shown either way. Killed after `timeout` seconds (exit 124)."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               errors="replace")
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        process.kill()

    timer = threading.Timer(timeout, expire) if timeout else None
    if timer is not None:
        timer.start()
    tail: collections.deque[str] = collections.deque(maxlen=60)
    try:
        for line in process.stdout:
            tail.append(line)
            shown = line.rstrip("\n") if verbose else shown_line(line)
            if shown is not None:
                print(shown, flush=True)
        code = process.wait()
    finally:
        if timer is not None:
            timer.cancel()
        if process.poll() is None:  # interrupted (Ctrl-C, SIGTERM): the run's client goes with us
            process.kill()
            process.wait()
    if expired.is_set():
        print(f"fedsynth: the run did not finish within {timeout:.0f} s", file=sys.stderr)
        return 124
    if code != 0 and not verbose:
        print("fedsynth: the run failed; its last log lines:\n" + "".join(tail), file=sys.stderr)
    return code


def run_status_code(env: dict[str, str], connection: str) -> int:
    """`flwr run --stream` exits 0 even when the ServerApp failed: ask the SuperLink how the run ended."""
    import json

    listing = subprocess.run(["flwr", "ls", connection, "--format", "json"], env=env, capture_output=True, text=True)
    try:
        runs = json.loads(listing.stdout)["runs"]
    except (json.JSONDecodeError, KeyError):
        print(f"fedsynth: could not read the run's status:\n{listing.stdout}{listing.stderr}", file=sys.stderr)
        return 1
    failed = [r for r in runs if "completed" not in str(r.get("status", ""))]
    for run in failed:
        print(f"fedsynth: run {run.get('run-id')} ended {run.get('status')}", file=sys.stderr)
    return 1 if failed or not runs else 0


# fedsynth's pyproject.toml (a link to it, installed with the code): the Flower app's components and settings
APP_SETTINGS = Path(__file__).resolve().parent / "flower_app.toml"


def write_app_variant(folder: Path, serverapp: str | None = None, clientapp: str | None = None,
                      extra_config: str = "") -> Path:
    """This Flower app in `folder`/app, optionally with other ServerApp/ClientApp components and extra
    `[tool.flwr.app.config]` lines (TOML), e.g. the FedAvg baselines that `bench/compare.py` runs.

    The folder holds the app's pyproject.toml alone: its components name modules of the installed `fedsynth`
    package, so the same app runs from a checkout, an editable install or a wheel, and its archive carries
    no code or results."""
    app = Path(folder) / "app"
    app.mkdir(parents=True, exist_ok=True)
    pyproject = APP_SETTINGS.read_text()
    for old, new in (('"fedsynth.server.server_app:app"', serverapp), ('"fedsynth.client.client_app:app"', clientapp)):
        if new is not None:
            if old not in pyproject:
                raise RuntimeError(f"pyproject.toml no longer names {old}")
            pyproject = pyproject.replace(old, f'"{new}"')
    pyproject = pyproject.replace("[tool.flwr.app.config]\n", "[tool.flwr.app.config]\n" + extra_config)
    # Flower refuses exclude patterns that match nothing, and this folder holds nothing to exclude
    pyproject = "\n".join(line for line in pyproject.splitlines() if not line.startswith("fab-exclude")) + "\n"
    (app / "pyproject.toml").write_text(pyproject)
    return app
