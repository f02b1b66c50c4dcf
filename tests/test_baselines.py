"""The DP-FedAvg / FedAvg baseline on the real Flower simulation engine: every site ends at the run's ε."""

import json

import pytest

from fedsynth.common.simulation import run_simulation, write_app_variant
from fedsynth.server.fedavg_server_app import BASELINE_COMPONENTS, BASELINE_CONFIG
from helpers import TWO_AT_ONCE

TINY = ('dataset="mnist5k" rounds=2 local-epochs=1 batch-size=32 width=8 lr=0.05 expected-sites=3 '
        'timeout=600 seed=0')


@pytest.mark.slow
@pytest.mark.parametrize("epsilon,front_end", [(4.0, "none"), (0.0, "none"), (4.0, "scatter")])
def test_fedavg_rounds_complete_and_dp_sites_end_at_the_target(tmp_path, epsilon, front_end):
    app = write_app_variant(tmp_path, extra_config=BASELINE_CONFIG, **BASELINE_COMPONENTS)
    out = tmp_path / "out"
    tiny = TINY if front_end == "none" else TINY.replace("batch-size=32", "batch-size=512").replace("lr=0.05", "lr=0.4")
    rc = run_simulation(app, 3, tiny + f' epsilon={epsilon} front-end="{front_end}" output-dir="{out}"',
                        timeout=900, federation_config=TWO_AT_ONCE)
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["rounds"] == 2 and len(metrics["accuracy_per_round"]) == 2 and metrics["sites"] == 3
    assert metrics["bytes_per_site"] > 0 and metrics["bytes_total"] == 3 * metrics["bytes_per_site"]
    assert (out / "global_model.safetensors").exists() and metrics["front_end"] == front_end
    if front_end == "scatter":  # only the linear head travels: 81·7·7·10 weights and 10 biases, down and up
        assert metrics["bytes_per_site"] == 2 * 2 * 4 * (81 * 7 * 7 * 10 + 10)
        assert metrics["accuracy"] > 0.3
    if epsilon > 0:
        assert metrics["method"] == "dp-fedavg" and 0.9 * epsilon <= metrics["max_site_epsilon"] <= epsilon
    else:
        assert metrics["method"] == "fedavg" and metrics["max_site_epsilon"] is None
        assert metrics["accuracy"] > 0.3  # two rounds of plain FedAvg on 3×1333 MNIST digits; chance is 0.1
