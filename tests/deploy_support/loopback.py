"""Start the deployment processes on loopback for the tests: the SuperLink (TLS, SuperNode authentication),
`flwr supernode register`, and SuperNodes, with the command lines `fedsynth deploy` prints."""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from fedsynth.common.deployment import CONNECTION, superlink_command, supernode_command
from fedsynth.common.simulation import flower_env, free_port, stop_process_group


@dataclass
class SuperLink:
    """A running `flower-superlink` and the FLWR_HOME whose config.toml reaches it."""

    process: subprocess.Popen
    port: int
    flwr_home: Path
    log: Path

    @property
    def env(self) -> dict[str, str]:
        return flower_env(self.flwr_home)

    @property
    def fleet_address(self) -> str:
        return f"127.0.0.1:{self.port}"


def write_connection(flwr_home: Path, port: int, root_certificates: Path | None) -> None:
    """The `flwr` CLI's connection to this SuperLink in FLWR_HOME/config.toml."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    lines = ["[superlink]", f'default = "{CONNECTION}"', "", f"[superlink.{CONNECTION}]",
             f'address = "127.0.0.1:{port}"']
    if root_certificates is not None:
        lines.append(f'root-certificates = "{root_certificates}"')
    (flwr_home / "config.toml").write_text("\n".join(lines) + "\n")


def start_superlink(keys: Path, workdir: Path, timeout: float = 60.0) -> SuperLink:
    """Start the SuperLink on a free loopback port and wait until the CLI can reach it."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    flwr_home = workdir / "flwr-home"
    write_connection(flwr_home, port, keys / "superlink" / "ca.crt")
    log = workdir / "superlink.log"
    with open(log, "ab") as sink:
        process = subprocess.Popen(superlink_command(keys, port, workdir / "superlink.db"), env=flower_env(flwr_home),
                                   stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    link = SuperLink(process, port, flwr_home, log)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"flower-superlink exited with {process.returncode}; see {log}")
        if _answers(flwr(link, "supernode", "list", CONNECTION, "--format", "json")):
            return link
        if time.monotonic() > deadline:
            stop_process_group(process)
            raise RuntimeError(f"flower-superlink did not answer in {timeout:.0f}s; see {log}")
        time.sleep(0.5)


def _answers(done: subprocess.CompletedProcess) -> bool:
    """`flwr ... --format json` exits 0 even when the SuperLink is unreachable: read its verdict."""
    try:
        return done.returncode == 0 and json.loads(done.stdout).get("success") is True
    except json.JSONDecodeError:
        return False


def flwr(link: SuperLink, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Run the `flwr` CLI against this SuperLink's connection."""
    return subprocess.run(["flwr", *args], env=link.env, capture_output=True, text=True, timeout=timeout)


def register_supernode(link: SuperLink, public_key: Path) -> None:
    """`flwr supernode register KEY.pub` — the SuperLink then admits the node holding the private half."""
    done = flwr(link, "supernode", "register", str(public_key), CONNECTION)
    if done.returncode != 0:
        raise RuntimeError(f"flwr supernode register {public_key} failed: {done.stdout}{done.stderr}")


def start_supernode(link: SuperLink, site_dir: Path, node_config: dict, log: Path,
                    root_certificates: Path | None = None) -> subprocess.Popen:
    """A SuperNode for `site_dir`'s keys. Its ClientApps run one torch thread each: the loopback sites share
    one machine's cores, and five sites at the default (all cores each) spend much of the round contending
    for them (four tiny sites at once: 82 s at 2 threads each, 33 s at 1, on 2 cores)."""
    command = supernode_command(site_dir, link.fleet_address, free_port(), node_config,
                                root_certificates if root_certificates is not None else site_dir / "ca.crt")
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as sink:
        env = {**link.env, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        return subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
