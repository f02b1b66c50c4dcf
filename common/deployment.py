"""The command lines of Flower's own deployment processes as a real federation runs them: a SuperLink
with TLS and SuperNode authentication, and SuperNodes with the CA certificate, their auth key and a
node config pointing at the site's data, ledger and signing key. `fedsynth deploy` prints them;
the loopback tests start them (tests/deploy_support/loopback.py).
"""

from __future__ import annotations

import shlex
from pathlib import Path

CONNECTION = "fedsynth"


def superlink_command(keys: Path, port: int, database: Path, host: str = "127.0.0.1") -> list[str]:
    """The SuperLink with TLS (certificate from `fedsynth keys`) and SuperNode authentication on,
    and no per-run dependency installation (the coordinator's environment is the app's)."""
    tls = keys / "superlink"
    return ["flower-superlink", "--ssl-ca-certfile", str(tls / "ca.crt"), "--ssl-certfile", str(tls / "server.pem"),
            "--ssl-keyfile", str(tls / "server.key"), "--enable-supernode-auth",
            "--disable-runtime-dependency-installation", "--host", host, "--port", str(port),
            "--database", str(database)]


def supernode_command(site_dir: Path, superlink: str, port: int, node_config: dict[str, str | int | float],
                      root_certificates: Path | None = None, max_retries: int | None = 0) -> list[str]:
    """A site's SuperNode: trusts the CA, authenticates with its registered key, runs the ClientApp locally.
    `max_retries=None` keeps reconnecting (a service); 0 fails fast (tests)."""
    config = " ".join(f"{k}={_toml_value(v)}" for k, v in node_config.items())
    command = ["flower-supernode", "--superlink", superlink, "--auth-supernode-private-key",
               str(site_dir / "supernode-auth.key"), "--port", str(port), "--node-config", config]
    if max_retries is not None:
        command += ["--max-retries", str(max_retries)]
    if root_certificates is not None:
        command += ["--root-certificates", str(root_certificates)]
    return command


def _toml_value(value: str | int | float) -> str:
    return f'"{value}"' if isinstance(value, (str, Path)) else str(value)


def describe(command: list[str]) -> str:
    return " ".join(shlex.quote(part) for part in command)
