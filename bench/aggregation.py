"""How to combine label-skewed sites' DP heads in one shot: the server's aggregation rule, apart from synthesis.

Every site of a Dirichlet federation runs exactly the ScatterNet engine's mechanism (client/engine.py's
plan: the head's DP-SGD steps and the noisy class histogram, at the site's ε); the server then sees each
site's head directly (the ceiling of what a set that reproduces the head can carry) and combines them by
each rule. Rules marked `released only` use nothing but what a site releases; the others use the true
class counts, as non-private references. Writes bench/results/aggregation.json.

With --head-settings it measures instead how the sites' own DP-SGD settings (expected batch, learning
rate, epochs) move the consensus head, and writes bench/results/site_heads.json:

    .venv/bin/python bench/aggregation.py --epsilon 1 10
    .venv/bin/python bench/aggregation.py --epsilon 1 --head-settings 4096:0.4:20 1024:0.2:20 1024:0.2:20:prv:2
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.results_io import add_federation_arguments, app_head_settings, merge_rows, percent  # noqa: E402
from bench.results_io import field_ran_with, update_readme_block  # noqa: E402

OUT = ROOT / "bench" / "results" / "aggregation.json"
HEADS_OUT = ROOT / "bench" / "results" / "site_heads.json"
RULES = ("each site's own head (mean)", "plain average", "average weighted by site size",
         "class rows weighted by class counts (true)", "pairwise consensus, released counts",
         "pairwise consensus, true counts", "class-wise vote, released counts",
         "vote gated per input, released counts")


def features(front_end, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([front_end.features(images[i:i + 2000]) for i in range(0, len(images), 2000)])


def site_heads(train, train_features, sites: int, alpha: float, epsilon: float, seed: int, **settings):
    """Each site's head (weights | bias), its true and its released class counts, as the engine makes them
    (`settings`: DistillConfig fields that differ from the engine's defaults, e.g. head_batch)."""
    from fedsynth.client.config import DistillConfig
    from fedsynth.client.engine import plan, site_head
    from fedsynth.common.front_end import build_front_end
    from fedsynth.common.partition import partition_indices

    config = DistillConfig(front_end="scatter", epsilon=epsilon, **settings).resolved()
    channels = build_front_end("scatter", train.image_shape).feature_channels
    out = []
    for k in range(sites):
        idx = partition_indices(train.labels, sites, k, "dirichlet", alpha, seed)
        site = train.subset(idx)
        mechanism = plan(site, config).mechanism
        secret = 7919 * seed + k + 1
        device = train_features.device  # the heads train where the features lie; the maps come back to the CPU
        counts, head = site_head(train_features[idx.to(device)], site.labels.to(device), 10, mechanism, config,
                                 channels, secret)
        joint = torch.cat([head.weight.detach(), head.bias.detach()[:, None]], 1).double().cpu()
        released = torch.tensor(counts, dtype=torch.float64)
        out.append((joint, torch.bincount(site.labels, minlength=10).double(), released))
        print(f"site {k}: {len(idx)} records, ε = {epsilon:g}", flush=True)
    return out


def rules(heads) -> dict[str, tuple[torch.Tensor | torch.nn.Module, bool]]:
    """Each rule's combined map (or, for the vote, its model on features) and whether it uses only released
    information."""
    from fedsynth.common.front_end.consensus import consensus
    from fedsynth.common.front_end.vote import GATE_ITERATIONS

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
        "class-wise vote, released counts": (vote_on_features(maps, released), True),
        "vote gated per input, released counts": (vote_on_features(maps, released, GATE_ITERATIONS), True),
    }


def vote_on_features(maps: list[torch.Tensor], counts: torch.Tensor, gate_iterations: int = 0,
                     tempered: bool = False) -> torch.nn.Module:
    """The class-wise vote (common/front_end/vote.py; gated per input with `gate_iterations`) of the heads `maps`
    [K, D + 1] at the sites' own scale, on features; `tempered`: through the server's own `vote_of_maps`, which
    tempers each site's logits by `SITE_LOGIT_SCALE`."""
    from fedsynth.common.front_end.vote import FrontEndVote, vote_of_maps

    if tempered:
        return vote_of_maps(torch.nn.Identity(), maps, counts, torch.ones(len(maps)), gate_iterations)
    return FrontEndVote.from_maps(torch.nn.Identity(), maps, counts, gate_iterations)


def accuracy(joint: torch.Tensor | torch.nn.Module, test_features: torch.Tensor, labels: torch.Tensor) -> float:
    """Test accuracy of a combined map [K, D + 1] or of a model on features (the vote)."""
    if isinstance(joint, torch.nn.Module):
        from fedsynth.common.data import to_model_space

        with torch.no_grad():  # the vote's model takes [-1, 1] inputs and maps them back before its front end
            logits = joint(to_model_space(test_features.float()))
    else:
        logits = test_features.double() @ joint[:, :-1].T + joint[:, -1]
    return float((logits.argmax(1) == labels).float().mean())


def table(rows: list[dict]) -> str:
    epsilons = sorted({r["epsilon"] for r in rows})
    lines = ["| server's rule | uses | " + " | ".join(f"ε = {e:g}" for e in epsilons) + " |",
             "|---|---|" + "---|" * len(epsilons)]
    for rule in sorted({r["rule"] for r in rows}, key=RULES.index):
        cells = []
        for e in epsilons:  # mean ± std over the partition seeds measured, their number in brackets
            found = [r["accuracy"] for r in rows if r["rule"] == rule and r["epsilon"] == e]
            cells.append("—" if not found else percent(found[0]) if len(found) == 1 else
                         f"{percent(statistics.fmean(found), statistics.stdev(found))} ({len(found)})")
        uses = "released only" if next(r for r in rows if r["rule"] == rule)["released_only"] else "true counts"
        lines.append(f"| {rule} | {uses} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


HEAD_RULES = {"consensus": "consensus", "vote": "vote", "gated": "gated vote",  # server rules scored on the heads
              "tempered": "tempered gated vote (the server's)"}


def head_setting(text: str) -> dict:
    """'BATCH:LR:EPOCHS[:ACCOUNTANT[:MEAN_RELEASES]]' → the DistillConfig fields of one site-head setting."""
    batch, lr, epochs, *rest = text.split(":")
    return {"head_batch": float(batch), "head_lr": float(lr), "head_epochs": float(epochs),
            "accountant": rest[0] if rest else "rdp", "mean_releases": int(rest[1]) if len(rest) > 1 else 0}


def _setting(row: dict) -> tuple:
    c = row["config"]
    return (c["head_batch"], c["head_lr"], c["head_epochs"], c.get("accountant", "rdp"),
            field_ran_with(c, "mean_releases"))


def heads_table(rows: list[dict]) -> str:
    """One line per partition seed and site-head setting: the server's rules on the heads at each ε (None: no
    noise), each rule's columns only where some row measured it."""
    epsilons = sorted({r["epsilon"] for r in rows}, key=lambda e: math.inf if e is None else e)
    label = {e: "no noise" if e is None else f"ε = {e:g}" for e in epsilons}
    columns = [(rule, e) for rule in HEAD_RULES for e in epsilons
               if any(r["epsilon"] == e and r.get(rule) is not None for r in rows)]
    lines = ["| partition seed | site's head batch | head lr | epochs | σ calibrated by | mean-feature releases | "
             "DP-SGD steps of the median site | " + " | ".join(f"{HEAD_RULES[rule]}, {label[e]}" for rule, e in columns)
             + " |", "|---|---|---|---|---|---|---|" + "---|" * len(columns)]
    # by partition seed, then as before seeds were listed: the largest batch, rate and epochs first
    for seed, *setting in sorted(sorted({(r["seed"], *_setting(r)) for r in rows}, reverse=True), key=lambda k: k[0]):
        found = {r["epsilon"]: r for r in rows if r["seed"] == seed and list(_setting(r)) == setting}
        cells = [percent(found[e][rule]) if found.get(e, {}).get(rule) is not None else "—" for rule, e in columns]
        steps = next(iter(found.values()))["steps"]
        batch, lr, epochs, accountant, mean_releases = setting
        lines.append(f"| {seed} | {batch:g} | {lr:g} | {epochs:g} | {accountant} | {mean_releases} | {steps} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def measure_head_settings(args, train, train_features, test_features, test) -> None:
    from fedsynth.client.config import DistillConfig
    from fedsynth.client.engine import plan
    from fedsynth.common.front_end.consensus import consensus
    from fedsynth.common.front_end.vote import GATE_ITERATIONS, SITE_LOGIT_SCALE
    from fedsynth.common.partition import partition_indices
    from fedsynth.common.versions import library_versions

    parts = [partition_indices(train.labels, args.sites, k, "dirichlet", args.alpha, args.seed)
             for k in range(args.sites)]
    site = train.subset(sorted(parts, key=len)[(args.sites - 1) // 2])  # the median site, for the step count
    for epsilon in args.epsilon:
        for text in args.head_settings:
            settings = head_setting(text)
            started = time.time()
            heads = site_heads(train, train_features, args.sites, args.alpha, epsilon, args.seed, **settings)
            released = [r.clamp_min(0) for _, _, r in heads]
            counts = torch.stack(released)
            maps = [h for h, _, _ in heads]
            median = plan(site, DistillConfig(front_end="scatter", epsilon=epsilon, **settings)).mechanism
            row = {"epsilon": None if math.isinf(epsilon) else epsilon, "delta": 1e-5, "sites": args.sites,
                   "alpha": args.alpha, "seed": args.seed,
                   "front_end": "scatter", "steps": median.steps, "noise_multiplier": median.noise_multiplier,
                   "consensus": accuracy(consensus(maps, released), test_features, test.labels),
                   "average": accuracy(sum(maps) / len(maps), test_features, test.labels),
                   "vote": accuracy(vote_on_features(maps, counts), test_features, test.labels),
                   "gated": accuracy(vote_on_features(maps, counts, GATE_ITERATIONS), test_features, test.labels),
                   "tempered": accuracy(vote_on_features(maps, counts, GATE_ITERATIONS, tempered=True), test_features,
                                        test.labels),
                   "seconds": time.time() - started, "versions": library_versions(),
                   "config": {**settings, "server_rule": "pairwise consensus, vote and gated vote of the heads "
                                                         "(untempered and tempered), and their mean; released counts",
                              "site_logit_scale": SITE_LOGIT_SCALE}}
            print(json.dumps({k: v for k, v in row.items() if k != "versions"}), flush=True)
            merge_rows(HEADS_OUT, "site_heads", [row],
                       key=lambda r: (r["epsilon"] or math.inf, r["seed"], r["sites"], *_setting(r)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_federation_arguments(parser)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--readme-only", action="store_true")
    parser.add_argument("--head-settings", nargs="+", metavar="BATCH:LR:EPOCHS",
                        help="measure these site-head DP-SGD settings (writes site_heads.json) instead of the rules")
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
        if args.head_settings:
            measure_head_settings(args, train, train_features, test_features, test)
        for epsilon in ([] if args.head_settings else args.epsilon):
            head = app_head_settings(epsilon)  # the rules run on the heads the federated app's sites train
            heads = site_heads(train, train_features, args.sites, args.alpha, epsilon, args.seed, **head)
            own = [accuracy(h, test_features, test.labels) for h, _, _ in heads]
            rows = [{"rule": "each site's own head (mean)", "accuracy": sum(own) / len(own), "released_only": True}]
            rows += [{"rule": name, "accuracy": accuracy(joint, test_features, test.labels), "released_only": used}
                     for name, (joint, used) in rules(heads).items()]
            for row in rows:
                row.update(epsilon=epsilon, delta=1e-5, sites=args.sites, alpha=args.alpha, seed=args.seed,
                           front_end="scatter", seconds=time.time() - started, versions=library_versions(),
                           config=head)
            merge_rows(OUT, "aggregation", rows, key=lambda r: (r["rule"], r["epsilon"], r["seed"], r["sites"]))
    rows = json.loads(OUT.read_text())["rows"]
    print(table(rows))
    update_readme_block("aggregation", table(rows))
    if HEADS_OUT.exists():
        heads = json.loads(HEADS_OUT.read_text())["rows"]
        print(heads_table(heads))
        update_readme_block("site-heads", heads_table(heads),
                            source="_Generated by `bench/aggregation.py --head-settings` from "
                                   "`bench/results/site_heads.json`._")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
