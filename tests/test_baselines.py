"""The DP-FedAvg / FedAvg baseline on the real Flower simulation engine: every site ends at the run's ε."""

import json

import pytest

from common.simulation import run_simulation, write_app_variant
from server.fedavg_server_app import BASELINE_COMPONENTS, BASELINE_CONFIG

TINY = ('dataset="mnist5k" rounds=2 local-epochs=1 batch-size=32 width=8 lr=0.05 expected-sites=3 '
        'timeout=600 seed=0')


@pytest.mark.slow
@pytest.mark.parametrize("epsilon", [4.0, 0.0])
def test_fedavg_rounds_complete_and_dp_sites_end_at_the_target(tmp_path, epsilon):
    app = write_app_variant(tmp_path, extra_config=BASELINE_CONFIG, **BASELINE_COMPONENTS)
    out = tmp_path / "out"
    rc = run_simulation(app, 3, TINY + f' epsilon={epsilon} output-dir="{out}"', timeout=900,
                        federation_config="client-resources-num-cpus=1")
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["rounds"] == 2 and len(metrics["accuracy_per_round"]) == 2 and metrics["sites"] == 3
    assert metrics["bytes_per_site"] > 0 and metrics["bytes_total"] == 3 * metrics["bytes_per_site"]
    assert (out / "global_model.safetensors").exists()
    if epsilon > 0:
        assert metrics["method"] == "dp-fedavg" and 0.9 * epsilon <= metrics["max_site_epsilon"] <= epsilon
    else:
        assert metrics["method"] == "fedavg" and metrics["max_site_epsilon"] is None
        assert metrics["accuracy"] > 0.3  # two rounds of plain FedAvg on 3×1333 MNIST digits; chance is 0.1
