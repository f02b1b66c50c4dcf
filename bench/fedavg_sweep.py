"""Tuning DP-FedAvg on the ScatterNet front end, in one process, before its row runs through Flower.

Each site holds its Dirichlet partition, computes the fixed front end's features once, and in
every round runs `local-epochs` of DP-SGD of the global linear head (client/head_training.py,
Opacus, the same code the Flower baseline runs) with σ calibrated once for all its rounds, so it
ends at (ε, δ); the server averages the heads weighted by records (Flower's FedAvg). The grid
covers rounds ∈ {10, 30, 50} × learning rate; with every record clipped, C and the learning
rate only act through their product, so sweeping one sweeps both. Test accuracy picks the best
setting — tuning on the test split favours the peer. Writes bench/results/fedavg_sweep.json.

    .venv/bin/python bench/fedavg_sweep.py --epsilon 1 10
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.results_io import add_federation_arguments  # noqa: E402

ROUNDS = (10, 30, 50)
LEARNING_RATES = (0.2, 0.4, 0.8)
BATCH = 1024  # expected records per local DP-SGD step
OUT = ROOT / "bench" / "results" / "fedavg_sweep.json"


def run(sites: list, test, rounds: int, lr: float, epsilon: float, seed: int) -> float:
    """Test accuracy of the global head after `rounds` rounds of DP-FedAvg."""
    from fedsynth.client.head_training import train_head
    from fedsynth.client.local_training import plan_dp_sgd
    from fedsynth.common.models import linear_head

    global_head = linear_head(test[0].shape[1], 10)
    plans = [plan_dp_sgd(len(y), BATCH, 1, rounds, epsilon, 1e-5, 1.0) for _, y in sites]
    for r in range(1, rounds + 1):
        state = global_head.state_dict()
        heads = [train_head(x, y, 10, plan.mechanism(1), lr=lr, momentum=0.9, secret=seed * 1000 + r + 7919 * k,
                            initial=state) for k, ((x, y), plan) in enumerate(zip(sites, plans))]
        total = sum(len(y) for _, y in sites)
        with torch.no_grad():
            for name, param in global_head.named_parameters():
                param.copy_(sum(dict(h.named_parameters())[name] * len(y) for h, (_, y) in zip(heads, sites)) / total)
    x_test, y_test = test
    with torch.no_grad():
        return float((global_head(x_test).argmax(1) == y_test).float().mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_federation_arguments(parser)
    args = parser.parse_args()
    from fedsynth.common.data import load_fashion_mnist
    from fedsynth.common.front_end import build_front_end
    from fedsynth.common.partition import partition_indices
    from fedsynth.common.versions import library_versions

    train, test = load_fashion_mnist(train=True), load_fashion_mnist(train=False)
    front_end = build_front_end("scatter", train.image_shape).eval()
    features, test_features = front_end.features(train.images), front_end.features(test.images)
    sites = []
    for k in range(args.sites):
        idx = partition_indices(train.labels, args.sites, k, "dirichlet", args.alpha, args.seed)
        sites.append((features[idx], train.labels[idx]))
    rows = []
    for epsilon, rounds, lr in itertools.product(args.epsilon, ROUNDS, LEARNING_RATES):
        started = time.time()
        acc = run(sites, (test_features, test.labels), rounds, lr, epsilon, args.seed)
        rows.append({"method": "dp-fedavg", "front_end": "scatter", "partition": "dirichlet", "alpha": args.alpha,
                     "sites": args.sites, "epsilon": epsilon, "rounds": rounds, "lr": lr, "batch": BATCH,
                     "local_epochs": 1, "clip_norm": 1.0, "accuracy": acc, "seconds": time.time() - started,
                     "seed": args.seed})
        print(f"ε={epsilon:g} rounds={rounds} lr={lr}: {100 * acc:.2f} % ({time.time() - started:.0f} s)", flush=True)
    best = {eps: max((r for r in rows if r["epsilon"] == eps), key=lambda r: r["accuracy"]) for eps in args.epsilon}
    OUT.write_text(json.dumps({"benchmark": "fedavg_sweep", "rows": rows, "versions": library_versions(),
                               "best": {str(k): v for k, v in best.items()}}, indent=2, sort_keys=True) + "\n")
    for eps, row in best.items():
        print(f"best at ε={eps:g}: rounds={row['rounds']} lr={row['lr']} → {100 * row['accuracy']:.2f} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
