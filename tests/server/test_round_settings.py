import pytest

from fedsynth.server.round_settings import choice_of, unknown_setting

GOOD = {"front-end": "scatter", "pool-weighting": "auto", "aggregation": "vote"}


def test_known_settings_pass_and_absent_keys_take_the_servers_defaults():
    assert unknown_setting(GOOD) is None
    assert unknown_setting({"front-end": "none"}) is None
    assert choice_of({"front-end": "none"}, "pool-weighting") == "auto"
    assert choice_of({"front-end": "none"}, "aggregation") == "gated"


def test_the_apps_run_config_asks_for_the_servers_own_defaults():
    import tomllib

    from fedsynth.common.simulation import APP_SETTINGS

    app = tomllib.loads(APP_SETTINGS.read_text())["tool"]["flwr"]["app"]["config"]
    assert all(app[key] == choice_of({}, key) for key in ("aggregation", "pool-weighting"))


@pytest.mark.parametrize("key,value", [("pool-weighting", "count"), ("aggregation", "median"),
                                       ("front-end", "wavelets"), ("aggregation", 3), ("pool-weighting", "")])
def test_an_unknown_value_is_named_with_its_choices(key, value):
    reason = unknown_setting({**GOOD, key: value})
    assert reason is not None and reason.startswith(f"unknown {key} {str(value)!r}; choose from ")


def test_a_run_config_without_a_front_end_is_refused_not_defaulted():
    # the sites would fall back to the app's own default, and the server would judge their sets by another
    assert unknown_setting({"pool-weighting": "auto"}) == "unknown front-end 'None'; choose from none, scatter"


def test_a_hostile_value_is_cut_short_in_the_one_line_reason():
    reason = unknown_setting({**GOOD, "aggregation": "x" * 10_000 + "\n"})
    assert reason is not None and len(reason) < 120 and "\n" not in reason
