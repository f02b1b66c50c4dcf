"""Which server model on the ScatterNet front end: the closed-form linear head against a small CNN head.

For each released set the server could be handed, the linear head fitted in closed form to its (soft) labels
(`fedsynth evaluate --model head`) and `--seeds` CNN heads trained on them (`--model cnn`), both on the
ScatterNet features; beside them, 10 real images per class (a yardstick, not releasable). Sets: kept one-party
sets (`bench/results/sets/NAME.safetensors`) and a round's pool files (`--pools`, each folder's own rule
recorded beside it). Writes bench/results/server_heads.json and the RESULTS block `server_heads`:

    .venv/bin/python bench/server_heads.py
    .venv/bin/python bench/server_heads.py --pools /tmp/round-eps1/out --sets scatter-centred_ipc10_eps1
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
from bench.results_io import merge_rows, percent, read_rows, update_readme_block  # noqa: E402

OUT = ROOT / "bench" / "results" / "server_heads.json"
SETS = ROOT / "bench" / "results" / "sets"
ENGINES = {"none": "pixel", "scatter": "ScatterNet"}  # a set's front end, as the table names its engine
DEFAULT_SETS = ("cpu-replay3-release2_ipc10_eps1", "cpu-replay3-release2_ipc10_eps10", "scatter-centred_ipc10_eps1",
                "scatter-centred_ipc10_eps10")


def real_images(train, per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`per_class` training images of each class, drawn with `seed`."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.cat([torch.nonzero(train.labels == c).flatten()[torch.randperm(int((train.labels == c).sum()),
                                                                                generator=gen)[:per_class]]
                     for c in range(train.num_classes)])
    return train.images[idx], train.labels[idx]


def score(name: str, kind: str, images, labels, soft, weights, test, seeds: int, extra: dict) -> dict:
    """The linear and the CNN head of one set, with the seconds each took."""
    from fedsynth.common.evaluation import evaluate_cnn_head, evaluate_on_front_end

    start = time.time()
    linear = evaluate_on_front_end(images, labels, test, "scatter", soft, weights)
    middle = time.time()
    cnn = evaluate_cnn_head(images, labels, test, "scatter", soft, weights, seeds)
    row = {"set": name, "kind": kind, "images": len(labels), "soft_labels": soft is not None,
           "linear": linear["accuracy_mean"], "linear_seconds": round(middle - start, 1),
           "cnn_mean": cnn["accuracy_mean"], "cnn_std": cnn["accuracy_std"], "cnn_accuracies": cnn["accuracies"],
           "cnn_seconds": round(time.time() - middle, 1), "cnn_config": cnn["train_config"], **extra}
    print(f"{name}: linear {percent(row['linear'])}, CNN {percent(row['cnn_mean'], row['cnn_std'])}", flush=True)
    return row


def table(rows: list[dict]) -> str:
    lines = ["| set | kind | ε | images | labels | linear head | CNN head | the round's own model |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        own = f"{percent(r['round_accuracy'])} ({r['round_rule']})" if r.get("round_rule") else "—"
        eps = "—" if r.get("epsilon") is None else f"{r['epsilon']:g}"
        lines.append(f"| {r['set']} | {r['kind']} | {eps} | {r['images']} | {'soft' if r['soft_labels'] else 'hard'} "
                     f"| {percent(r['linear'])} | {percent(r['cnn_mean'], r['cnn_std'])} | {own} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="*", default=list(DEFAULT_SETS), help="kept sets under bench/results/sets")
    parser.add_argument("--pools", nargs="*", type=Path, default=[], help="round output folders holding a pool file")
    parser.add_argument("--real", type=int, default=10, help="real images per class for the yardstick (0: none)")
    parser.add_argument("--seeds", type=int, default=3, help="CNN heads per set")
    parser.add_argument("--readme-only", action="store_true", help="only regenerate the RESULTS table from the JSON")
    args = parser.parse_args()
    if not args.readme_only:
        from fedsynth.common.data import load_dataset
        from fedsynth.common.synthetic_set import load_synthetic_set
        from fedsynth.common.versions import library_versions

        torch.manual_seed(0)
        test = load_dataset("fashion-mnist", train=False)
        rows, versions = [], library_versions()
        if args.real:
            images, labels = real_images(load_dataset("fashion-mnist", train=True), args.real, seed=0)
            rows.append(score(f"real-{args.real}", "real images (yardstick)", images, labels, None, None, test,
                              args.seeds, {"epsilon": None, "seed": 0}))
        for name in args.sets:
            s = load_synthetic_set(SETS / f"{name}.safetensors")
            claim_file = SETS / f"{name}.claim.json"
            config = json.loads(claim_file.read_text()).get("config", {}) if claim_file.is_file() else {}
            engine = ENGINES[config.get("front_end", "none")]
            rows.append(score(name, f"one party, {engine} engine", s.images, s.labels,
                              s.soft_labels, s.weights, test, args.seeds,
                              {"epsilon": config.get("epsilon"), "seed": config.get("seed")}))
        for folder in args.pools:
            s = load_synthetic_set(folder / "synthetic_pool.safetensors")
            metrics = json.loads((folder / "metrics.json").read_text())
            config = json.loads((folder / "privacy_report.json").read_text()).get("config", {})
            name = f"pool ε={config.get('epsilon')} seed {config.get('seed')}"
            engine = ENGINES[metrics.get("front_end", "none")]
            rows.append(score(name, f"federated pool, {engine} engine", s.images, s.labels,
                              s.soft_labels, s.weights, test, args.seeds,
                              {"epsilon": config.get("epsilon"), "seed": config.get("seed"),
                               "round_rule": metrics.get("aggregation"), "round_accuracy": metrics.get("accuracy")}))
        for row in rows:
            row.update(versions=versions, dataset="fashion-mnist")
        merge_rows(OUT, "server_heads", rows, key=lambda r: r["set"])
    update_readme_block("server_heads", table(read_rows(OUT)))
    print(table(read_rows(OUT)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
