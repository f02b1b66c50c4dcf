"""Tuning DP-FedAvg on the ScatterNet front end, in one process, before its row runs through Flower.

Each site holds its Dirichlet partition, computes the fixed front end's features once, and in
every round runs `local-epochs` of DP-SGD of the global linear head (client/head_training.py,
Opacus, the same code the Flower baseline runs) with σ calibrated once for all its rounds, so it
ends at (ε, δ); the server averages the heads weighted by records (Flower's FedAvg). The grid
covers rounds ∈ {10, 30, 50} × learning rate; with every record clipped, C and the learning
rate only act through their product, so sweeping one sweeps both. With `--mean-releases k` each site
first makes k releases of its own mechanism for a noisy mean feature (client/feature_mean.py, as the
fedsynth engine does), the server averages them by records, and every site's DP-SGD trains on the
features centred by that mean: σ is calibrated for the k releases and all the rounds together. Test
accuracy picks the best setting — tuning on the test split favours the peer. Writes
bench/results/fedavg_sweep.json (rows merged by ε, federation, seed, rounds, learning rate and mean
releases) and its table in bench/RESULTS.md.

    .venv/bin/python bench/fedavg_sweep.py --epsilon 1 10
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.results_io import (add_federation_arguments, add_share_arguments, merge_files, merge_rows,  # noqa: E402
                              percent, read_rows, update_readme_block)

ROUNDS = (10, 30, 50)
LEARNING_RATES = (0.2, 0.4, 0.8)
BATCH = 1024  # expected records per local DP-SGD step
OUT = ROOT / "bench" / "results" / "fedavg_sweep.json"


def site_plan(records: int, rounds: int, epsilon: float, mean_releases: int):
    """A site's DP-SGD plan for all its rounds, σ calibrated for `mean_releases` more releases of the same mechanism."""
    from dataclasses import replace

    from fedsynth.client.local_training import plan_dp_sgd
    from fedsynth.common.privacy.accounting import calibrate_noise_multiplier

    plan = plan_dp_sgd(records, BATCH, 1, rounds, epsilon, 1e-5, 1.0)
    if mean_releases == 0 or plan.noise_multiplier == 0:
        return plan
    steps = rounds * plan.steps_per_round + mean_releases
    return replace(plan, noise_multiplier=calibrate_noise_multiplier(epsilon, plan.delta, plan.sample_rate, steps,
                                                                     plan.accountant))


def federated_mean(sites: list, plans: list, mean_releases: int, channels: int, seed: int) -> torch.Tensor | None:
    """The record-weighted average of the sites' noisy mean features (None without releases)."""
    from fedsynth.client.feature_mean import noisy_feature_mean

    if mean_releases == 0:
        return None
    # stream 999 lies past every round's streams (seed * 1000 + round + 7919 * site, rounds < 998)
    means = [noisy_feature_mean(x, plan.mechanism(1), mean_releases, channels, secret=seed * 1000 + 7919 * k + 999)
             for k, ((x, _), plan) in enumerate(zip(sites, plans))]
    return sum(m * len(y) for m, (_, y) in zip(means, sites)) / sum(len(y) for _, y in sites)


def run(sites: list, test, rounds: int, lr: float, epsilon: float, seed: int, mean_releases: int = 0,
        channels: int = 1) -> float:
    """Test accuracy of the global head after `rounds` rounds of DP-FedAvg (on the features' device), centred on
    the federation's noisy mean feature when `mean_releases` > 0."""
    from fedsynth.client.head_training import train_head
    from fedsynth.common.models import linear_head

    global_head = linear_head(test[0].shape[1], 10).to(test[0].device)
    plans = [site_plan(len(y), rounds, epsilon, mean_releases) for _, y in sites]
    centre = federated_mean(sites, plans, mean_releases, channels, seed)
    for r in range(1, rounds + 1):
        state = global_head.state_dict()
        heads = [train_head(x, y, 10, plan.mechanism(1), lr=lr, momentum=0.9, secret=seed * 1000 + r + 7919 * k,
                            initial=state, centre=centre) for k, ((x, y), plan) in enumerate(zip(sites, plans))]
        total = sum(len(y) for _, y in sites)
        with torch.no_grad():
            for name, param in global_head.named_parameters():
                param.copy_(sum(dict(h.named_parameters())[name] * len(y) for h, (_, y) in zip(heads, sites)) / total)
    x_test, y_test = test
    with torch.no_grad():
        return float((global_head(x_test).argmax(1) == y_test).float().mean())


def tuned(rows: list[dict], sites: int = 10, alpha: float = 0.5) -> dict[float, dict]:
    """Per ε, the peer as tuned: the best (rounds, learning rate) on seed 0's partition (picked on the test split,
    in the peer's favour), with its accuracy over every partition seed measured at that setting."""
    rows = [r for r in rows if r["sites"] == sites and r["alpha"] == alpha]
    out = {}
    for epsilon in sorted({r["epsilon"] for r in rows}):
        grid = [r for r in rows if r["epsilon"] == epsilon and r["seed"] == 0]
        if not grid:
            continue
        best = max(grid, key=lambda r: r["accuracy"])
        runs = sorted((r for r in rows if r["epsilon"] == epsilon and _setting(r) == _setting(best)),
                      key=lambda r: r["seed"])
        scores = [r["accuracy"] for r in runs]
        out[epsilon] = {"rounds": best["rounds"], "lr": best["lr"], "mean_releases": _mean_releases(best),
                        "settings_tried": len(grid),
                        "accuracy_mean": statistics.fmean(scores),
                        "accuracy_std": statistics.stdev(scores) if len(scores) > 1 else None,
                        "seeds": [r["seed"] for r in runs], "bytes_total": best["bytes_total"]}
    return out


def _mean_releases(row: dict) -> int:
    """The releases a row spent on centring (rows from before the setting existed spent none)."""
    return row.get("mean_releases", 0)


def _setting(row: dict) -> tuple:
    """What the sweep tunes: rounds, learning rate, and the releases spent on centring."""
    return row["rounds"], row["lr"], _mean_releases(row)


def _row_key(row: dict) -> tuple:
    return (row["epsilon"], row["sites"], row["alpha"], row["seed"]) + _setting(row)


def _cell(run: dict | None, best: dict) -> str:
    """A grid point's accuracy, bold where it is its group's best; a dash where it did not run."""
    if run is None:
        return "–"
    score = percent(run["accuracy"])
    return f"**{score}**" if run is best else score


def table(rows: list[dict]) -> str:
    """One line per (ε, federation, seed, rounds and centring measured): accuracy at each learning rate, the
    group's best in bold."""
    lrs = sorted({r["lr"] for r in rows})
    lines = ["| ε | sites (α) | seed | rounds | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |",
             "|---|---|---|---|" + "---|" * len(lrs)]
    for group in sorted({_row_key(r)[:4] for r in rows}):
        runs = {_setting(r): r for r in rows if _row_key(r)[:4] == group}
        best = max(runs.values(), key=lambda r: r["accuracy"])
        for n, k in sorted({(rounds, k) for rounds, _, k in runs}):
            cells = [_cell(runs.get((n, lr, k)), best) for lr in lrs]
            label = f"{n}, centred ({k})" if k else f"{n}"
            lines.append(f"| {group[0]:g} | {group[1]} ({group[2]:g}) | {group[3]} | {label} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_federation_arguments(parser)
    parser.add_argument("--rounds", type=int, nargs="+", default=list(ROUNDS))
    parser.add_argument("--lr", type=float, nargs="+", default=list(LEARNING_RATES))
    parser.add_argument("--mean-releases", type=int, nargs="+", default=[0],
                        help="releases of each site's mechanism for the mean feature the heads are centred on "
                             "(0: none)")
    add_share_arguments(parser, OUT, "where the features and heads live (cpu, cuda)")
    parser.add_argument("--readme-only", action="store_true", help="only regenerate the RESULTS table from the JSON")
    args = parser.parse_args()
    if args.merge:
        merge_files(OUT, "fedavg_sweep", args.merge, key=_row_key)
    if args.merge or args.readme_only:
        update_readme_block("fedavg_sweep", table(read_rows(OUT)))
        return 0
    from fedsynth.common.data import load_fashion_mnist
    from fedsynth.common.front_end import build_front_end
    from fedsynth.common.partition import partition_indices
    from fedsynth.common.privacy.accounting import DEFAULT_ACCOUNTANT
    from fedsynth.common.versions import library_versions

    device = torch.device(args.device)
    train, test = load_fashion_mnist(train=True), load_fashion_mnist(train=False)
    front_end = build_front_end("scatter", train.image_shape).eval().to(device)
    features, test_features = front_end.features(train.images.to(device)), front_end.features(test.images.to(device))
    labels, test_labels = train.labels.to(device), test.labels.to(device)
    sites = []
    for k in range(args.sites):
        idx = partition_indices(train.labels, args.sites, k, "dirichlet", args.alpha, args.seed)
        sites.append((features[idx], labels[idx]))
    from fedsynth.common.models import linear_head

    # the head down and the update up, every round, counted as the Flower baseline's server counts them
    model_bytes = sum(v.numel() * v.element_size() for v in linear_head(features.shape[1], 10).state_dict().values())
    mean_bytes = features.shape[1] * features.element_size()  # a centred peer's mean up, the federation's down
    versions, rows = library_versions(), []
    for epsilon, rounds, lr, k in itertools.product(args.epsilon, args.rounds, args.lr, args.mean_releases):
        started = time.time()
        acc = run(sites, (test_features, test_labels), rounds, lr, epsilon, args.seed, k, front_end.feature_channels)
        rows = merge_rows(args.out, "fedavg_sweep", [{
            "method": "dp-fedavg", "front_end": "scatter", "partition": "dirichlet", "alpha": args.alpha,
            "sites": args.sites, "epsilon": epsilon, "rounds": rounds, "lr": lr, "mean_releases": k, "batch": BATCH,
            "local_epochs": 1, "clip_norm": 1.0, "accountant": DEFAULT_ACCOUNTANT, "accuracy": acc,
            "seconds": time.time() - started,
            "bytes_total": 2 * rounds * args.sites * model_bytes + (2 * args.sites * mean_bytes if k else 0),
            "device": str(device), "seed": args.seed, "versions": versions}], key=_row_key)
        print(f"ε={epsilon:g} rounds={rounds} lr={lr} mean-releases={k}: {100 * acc:.2f} % "
              f"({time.time() - started:.0f} s)", flush=True)
        if args.out == OUT:
            update_readme_block("fedavg_sweep", table(rows))
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
