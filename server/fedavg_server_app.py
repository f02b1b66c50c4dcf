"""Baseline ServerApp: (DP-)FedAvg over the same simulated sites, with Flower's own `FedAvg` strategy.

Every round each site trains locally (record-level DP-SGD at the run's ε, or plain SGD) and
the server averages the weights; after each round the global model is evaluated on the
server's test split. Writes `metrics.json` (accuracy per round, rounds, bytes, per-site ε,
time, memory) into `output-dir`. Used by `bench/compare.py` beside fedsynth.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from safetensors.torch import save_file

from fedsynth.common.data import load_dataset
from fedsynth.common.evaluation import accuracy
from fedsynth.common.front_end import build_front_end
from fedsynth.common.front_end.fit import FrontEndClassifier
from fedsynth.common.models import ConvNet, linear_head
from fedsynth.common.synthetic_set import write_json
from fedsynth.common.versions import library_versions

app = ServerApp()
# Run-config keys the baseline adds to the app's own (see `fedsynth.common.simulation.write_app_variant`);
# `epsilon` ≤ 0 means plain FedAvg without DP.
BASELINE_CONFIG = 'rounds = 10\nlocal-epochs = 1\nbatch-size = 64\nlr = 0.05\nclip-norm = 1.0\nnorm = "groupnorm"\n'
BASELINE_COMPONENTS = {"serverapp": "fedsynth.server.fedavg_server_app:app",
                       "clientapp": "fedsynth.client.fedavg_client_app:app"}
ROUND_KEYS = ("epsilon", "delta", "rounds", "local-epochs", "batch-size", "lr", "clip-norm", "width", "norm",
              "dataset", "partition", "alpha", "seed", "front-end")


def site_summary(replies: list[RecordDict], weighting_key: str) -> MetricRecord:
    """Per round: the largest ε any site has spent (−1: no DP), mean site time, largest peak memory."""
    metrics = [r["metrics"] for r in replies]
    return MetricRecord({
        "epsilon-max": max(float(m["epsilon"]) for m in metrics),
        "seconds-mean": sum(float(m["seconds"]) for m in metrics) / len(metrics),
        "peak-rss-mb-max": max(float(m["peak-rss-mb"]) for m in metrics),
        "sites": len(metrics),
        weighting_key: sum(int(m[weighting_key]) for m in metrics),
    })


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = dict(context.run_config)
    out = Path(str(cfg["output-dir"]))
    test = load_dataset(str(cfg["dataset"]), train=False)
    c, h, _ = test.image_shape
    front_end = str(cfg.get("front-end", "none"))
    if front_end == "none":
        model = ConvNet(c, test.num_classes, h, int(cfg["width"]), norm=str(cfg["norm"]))
        evaluated: torch.nn.Module = model
    else:  # only the linear head travels; the fixed front end is the same at every site
        features = build_front_end(front_end, test.image_shape).eval()
        model = linear_head(features.feature_dim, test.num_classes)
        evaluated = FrontEndClassifier(features, model)
    initial = ArrayRecord(model.state_dict())
    sites = int(cfg["expected-sites"])
    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=sites, min_available_nodes=sites,
                      train_metrics_aggr_fn=site_summary)

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model.load_state_dict(arrays.to_torch_state_dict())
        acc = accuracy(evaluated, test)
        print(f"[fedavg] round {server_round}: global accuracy {100 * acc:.2f} %", flush=True)
        return MetricRecord({"accuracy": acc})

    epsilon = float(cfg["epsilon"])
    train_config = ConfigRecord({k: cfg[k] for k in ROUND_KEYS if k in cfg})
    result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=int(cfg["rounds"]),
                            timeout=float(cfg.get("timeout", 3600)), train_config=train_config, evaluate_fn=evaluate)

    rounds = int(cfg["rounds"])
    per_round = [dict(result.train_metrics_clientapp[r]) for r in sorted(result.train_metrics_clientapp)]
    if len(per_round) < rounds:
        raise RuntimeError(f"only {len(per_round)} of {rounds} rounds completed")
    model_bytes = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    spent = per_round[-1]["epsilon-max"]
    metrics = {
        "method": "fedavg" if epsilon <= 0 or math.isinf(epsilon) else "dp-fedavg",
        "front_end": front_end,
        "accuracy": float(result.evaluate_metrics_serverapp[rounds]["accuracy"]),
        "accuracy_per_round": [float(result.evaluate_metrics_serverapp[r]["accuracy"]) for r in range(1, rounds + 1)],
        "rounds": rounds,
        "sites": sites,
        "max_site_epsilon": None if spent < 0 else spent,
        "bytes_per_site": 2 * rounds * model_bytes,  # the model down and the update up, every round
        "bytes_total": 2 * rounds * model_bytes * sites,
        "seconds_per_site_round": sum(r["seconds-mean"] for r in per_round) / rounds,
        "peak_rss_mb": max(r["peak-rss-mb-max"] for r in per_round),
        "config": cfg,
        "versions": library_versions(),
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "metrics.json", metrics)
    model.load_state_dict(result.arrays.to_torch_state_dict())
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "global_model.safetensors"))
    print(f"[fedavg] {metrics['method']}: {100 * metrics['accuracy']:.2f} % after {rounds} rounds; "
          f"site ε={metrics['max_site_epsilon']}; outputs in {out}", flush=True)
