"""Each engine setting is defined once (client/config.py); the CLI, the run config and the app's defaults agree."""

import dataclasses
import math
import tomllib
from pathlib import Path

import pytest

from fedsynth.client.cli import build_parser
from fedsynth.client.config import REQUEST_KEYS, DistillConfig, app_defaults, check_settings, from_request
from fedsynth.client.errors import EngineError

PYPROJECT = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
RUN_CONFIG = PYPROJECT["tool"]["flwr"]["app"]["config"]


def test_pyproject_run_config_holds_the_app_defaults_of_every_engine_key():
    defaults = app_defaults()
    assert set(defaults) == set(REQUEST_KEYS) and set(defaults) <= set(RUN_CONFIG)
    for key, value in defaults.items():
        assert RUN_CONFIG[key] == value, key


def test_a_site_reads_the_run_config_as_the_app_defaults():
    config = from_request(RUN_CONFIG)
    for f in dataclasses.fields(DistillConfig):
        if f.metadata["key"]:
            assert getattr(config, f.name) == RUN_CONFIG[f.metadata["key"]], f.name


def test_cli_defaults_are_the_engine_defaults():
    args = build_parser().parse_args(["distill", "--dataset", "mnist5k", "--out", "x"])
    engine = DistillConfig()
    for f in dataclasses.fields(DistillConfig):
        if hasattr(args, f.name):
            assert getattr(args, f.name) == getattr(engine, f.name), f.name


@pytest.mark.parametrize("request_", [{"steps": 2.5}, {"steps": "20"}, {"ipc": True}, {"epsilon": "ten"},
                                      {"steps": math.inf}, {"ipc": math.nan}])
def test_a_malformed_request_is_refused_by_name(request_):
    with pytest.raises(EngineError, match="the request's"):
        from_request(request_)


@pytest.mark.parametrize("changes", [dict(ipc=0), dict(epsilon=math.nan), dict(epsilon=-1.0), dict(delta=1.0),
                                     dict(clip_norm=math.inf), dict(width=2.5), dict(augment=1),
                                     dict(accountant="gdp"), dict(momentum_images=1.0)])
def test_out_of_range_settings_are_refused(changes):
    with pytest.raises(EngineError):
        check_settings(DistillConfig(**changes))


def test_defaults_and_infinite_epsilon_pass():
    check_settings(DistillConfig())
    check_settings(DistillConfig(epsilon=math.inf))
