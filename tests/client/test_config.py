"""Each engine setting is defined once (client/config.py); the CLI, the run config and the app's defaults agree."""

import dataclasses
import math
import tomllib
from pathlib import Path

import pytest

from fedsynth.client.cli import build_parser
from fedsynth.client.config import (AUTO, FIELDS_BEFORE, KEYS_BEFORE, REQUEST_KEYS, DistillConfig, app_defaults,
                                   auto_value, check_settings, from_request)
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


@pytest.mark.parametrize(("epsilon", "lr", "epochs"), [(0.5, 0.2, 20.0), (1.0, 0.2, 20.0), (10.0, 0.4, 40.0),
                                                         (50.0, 0.4, 40.0), (math.inf, 0.4, 40.0)])
def test_auto_head_settings_follow_the_target_epsilon_between_the_measured_ends(epsilon, lr, epochs):
    config = DistillConfig(epsilon=epsilon, head_lr=AUTO, head_epochs=AUTO).resolved()
    assert config.head_lr == pytest.approx(lr) and config.head_epochs == pytest.approx(epochs)


def test_auto_head_settings_rise_with_epsilon_and_explicit_values_stay():
    values = [auto_value("head_lr", e) for e in (1.0, 2.0, 3.0, 5.0, 10.0)]
    assert values == sorted(values) and len(set(values)) == 5
    assert DistillConfig(epsilon=10.0, head_lr=0.3, head_epochs=7.0).resolved() == DistillConfig(
        epsilon=10.0, head_lr=0.3, head_epochs=7.0)


def test_a_site_resolves_the_apps_auto_head_settings_at_the_requested_epsilon():
    assert RUN_CONFIG["head-lr"] == AUTO and RUN_CONFIG["head-epochs"] == AUTO
    low, high = (from_request({**RUN_CONFIG, "epsilon": e}).resolved() for e in (1.0, 10.0))
    assert (low.head_lr, low.head_epochs) == (0.2, 20.0) and (high.head_lr, high.head_epochs) == (0.4, 40.0)
    with pytest.raises(EngineError, match="the request's head-lr must be a number"):
        from_request({**RUN_CONFIG, "head-lr": "fast"})


def test_only_the_auto_settings_accept_auto():
    check_settings(DistillConfig(head_lr=AUTO, head_epochs=AUTO))
    with pytest.raises(EngineError):
        check_settings(DistillConfig(head_batch=AUTO))
    with pytest.raises(EngineError, match="the request's head-batch"):
        from_request({"head-batch": AUTO})


def test_what_older_runs_ran_with_is_a_valid_value_of_each_setting_and_keyed_by_its_run_config_key():
    check_settings(DistillConfig(**FIELDS_BEFORE))  # a typo'd choice or an out-of-range value is refused
    by_name = {f.name: f.metadata["key"] for f in dataclasses.fields(DistillConfig)}
    assert KEYS_BEFORE == {by_name[name]: value for name, value in FIELDS_BEFORE.items() if by_name[name]}
    assert FIELDS_BEFORE["synthesis_schedule"] == "constant" != DistillConfig().synthesis_schedule
