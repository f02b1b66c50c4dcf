"""How to combine label-skewed sites' DP heads in one shot: the server's aggregation rule, apart from synthesis.

Every site of a Dirichlet federation runs exactly the ScatterNet engine's mechanism (client/engine.py's
plan: the head's DP-SGD steps and the noisy class histogram, at the site's ε); the server then sees each
site's head directly (the ceiling of what a set that reproduces the head can carry) and combines them by
each rule. Rules marked `released only` use nothing but what a site releases; the others use the true
class counts, as non-private references. Writes bench/results/aggregation.json.

    .venv/bin/python bench/aggregation.py --epsilon 1 10
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.results_io import add_federation_arguments, merge_rows, percent, update_readme_block  # noqa: E402

OUT = ROOT / "bench" / "results" / "aggregation.json"
RULES = ("each site's own head (mean)", "plain average", "average weighted by site size",
         "class rows weighted by class counts (true)", "pairwise consensus, released counts",
         "pairwise consensus, true counts")


def features(front_end, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([front_end.features(images[i:i + 2000]) for i in range(0, len(images), 2000)])


def site_heads(train, train_features, sites: int, alpha: float, epsilon: float, seed: int):
    """Each site's head (weights | bias), its true and its released class counts, as the engine makes them."""
    from fedsynth.client.class_counts import COUNT_RELEASES, noisy_class_counts
    from fedsynth.client.config import DistillConfig
    from fedsynth.client.engine import plan
    from fedsynth.client.head_training import train_head
    from fedsynth.common.partition import partition_indices

    config = DistillConfig(front_end="scatter", epsilon=epsilon)
    out = []
    for k in range(sites):
        idx = partition_indices(train.labels, sites, k, "dirichlet", alpha, seed)
        site = train.subset(idx)
        mechanism = plan(site, config).mechanism
        secret = 7919 * seed + k + 1
        released = torch.tensor(noisy_class_counts(site.labels, 10, mechanism, secret + 2), dtype=torch.float64)
        steps = type(mechanism)(mechanism.noise_multiplier, mechanism.sample_rate,
                                mechanism.steps - COUNT_RELEASES, mechanism.clip_norm)
        head = train_head(train_features[idx], site.labels, 10, steps, lr=config.head_lr, momentum=0.9, secret=secret)
        joint = torch.cat([head.weight.detach(), head.bias.detach()[:, None]], 1).double()
        out.append((joint, torch.bincount(site.labels, minlength=10).double(), released))
        print(f"site {k}: {len(idx)} records, ε = {epsilon:g}", flush=True)
    return out


def rules(heads) -> dict[str, tuple[torch.Tensor, bool]]:
    """Each rule's combined map and whether it uses only released information."""
    from fedsynth.common.front_end.consensus import consensus

    maps = [h for h, _, _ in heads]
    true = torch.stack([n for _, n, _ in heads])
    released = torch.stack([r.clamp_min(0) for _, _, r in heads])
    size = released.sum(1) / released.sum()
    per_class = true / true.sum(0)
    return {
        "plain average": (sum(maps) / len(maps), True),
        "average weighted by site size": (sum(s * m for s, m in zip(size, maps)), True),
        "class rows weighted by class counts (true)": (sum(w[:, None] * m for w, m in zip(per_class, maps)), False),
        "pairwise consensus, released counts": (consensus(maps, list(released)), True),
        "pairwise consensus, true counts": (consensus(maps, list(true)), False),
    }


def accuracy(joint: torch.Tensor, test_features: torch.Tensor, labels: torch.Tensor) -> float:
    logits = test_features.double() @ joint[:, :-1].T + joint[:, -1]
    return float((logits.argmax(1) == labels).float().mean())


def table(rows: list[dict]) -> str:
    epsilons = sorted({r["epsilon"] for r in rows})
    lines = ["| server's rule | uses | " + " | ".join(f"ε = {e:g}" for e in epsilons) + " |",
             "|---|---|" + "---|" * len(epsilons)]
    for rule in sorted({r["rule"] for r in rows}, key=RULES.index):
        cells = []
        for e in epsilons:
            found = [r for r in rows if r["rule"] == rule and r["epsilon"] == e]
            cells.append(percent(found[0]["accuracy"]) if found else "—")
        uses = "released only" if next(r for r in rows if r["rule"] == rule)["released_only"] else "true counts"
        lines.append(f"| {rule} | {uses} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_federation_arguments(parser)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--readme-only", action="store_true")
    args = parser.parse_args()
    if not args.readme_only:
        from fedsynth.common.data import load_fashion_mnist
        from fedsynth.common.front_end import build_front_end
        from fedsynth.common.versions import library_versions

        torch.set_num_threads(args.threads)
        started = time.time()
        train, test = load_fashion_mnist(True), load_fashion_mnist(False)
        front_end = build_front_end("scatter", train.image_shape).eval()
        train_features, test_features = features(front_end, train.images), features(front_end, test.images)
        for epsilon in args.epsilon:
            heads = site_heads(train, train_features, args.sites, args.alpha, epsilon, args.seed)
            own = [accuracy(h, test_features, test.labels) for h, _, _ in heads]
            rows = [{"rule": "each site's own head (mean)", "accuracy": sum(own) / len(own), "released_only": True}]
            rows += [{"rule": name, "accuracy": accuracy(joint, test_features, test.labels), "released_only": used}
                     for name, (joint, used) in rules(heads).items()]
            for row in rows:
                row.update(epsilon=epsilon, delta=1e-5, sites=args.sites, alpha=args.alpha, seed=args.seed,
                           front_end="scatter", seconds=time.time() - started, versions=library_versions(),
                           config={"head_epochs": 20.0, "head_batch": 4096.0, "head_lr": 0.4, "accountant": "rdp"})
            merge_rows(OUT, "aggregation", rows, key=lambda r: (r["rule"], r["epsilon"], r["seed"], r["sites"]))
    rows = json.loads(OUT.read_text())["rows"]
    print(table(rows))
    update_readme_block("aggregation", table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
