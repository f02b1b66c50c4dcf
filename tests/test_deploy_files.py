"""The compose files and systemd units (which cannot run here) stay in step with the tested CLI."""

import re
import shlex
from pathlib import Path

import pytest

from fedsynth.client.cli import build_parser

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def _unit_commands():
    for unit in sorted((DEPLOY / "systemd").glob("*.service")):
        text = unit.read_text().replace("\\\n", " ")
        (exec_start,) = re.findall(r"^ExecStart=(.+)$", text, re.M)
        yield unit.name, shlex.split(exec_start)[1:]  # drop the fedsynth executable


def _compose_commands():
    for compose in sorted(DEPLOY.glob("compose.*.yaml")):
        (command,) = re.findall(r"command: \[(.+?)\]", compose.read_text(), re.S)
        args = [a.strip().strip('"') for a in command.replace("\n", " ").split(",")]
        yield compose.name, ["deploy"] + [a.replace("${SUPERLINK}", "link:8000") for a in args]


@pytest.mark.parametrize("name,argv", [*_unit_commands(), *_compose_commands()])
def test_deploy_files_use_options_the_cli_has(name, argv):
    args = build_parser().parse_args(argv)
    assert args.command == "deploy" and args.role in ("superlink", "supernode"), name
