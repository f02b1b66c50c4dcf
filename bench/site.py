"""One federated site's set, alone: where a site's accuracy goes, in minutes instead of a whole round.

Takes one site's partition exactly as the simulation gives it (same partitioner, seed and site
name, so the same per-site public seed), distils it with the app's engine settings from
`[tool.flwr.app.config]` plus `--set` overrides of `DistillConfig` fields, and trains fresh
evaluation networks on that site's own images (the engine bench's protocol). A round pools ten
such sets; this isolates one, so an engine change can be judged before a round is spent on it.
Writes `bench/results/site.json` (one row per partition, site, ε and effective engine config;
versions and seeds recorded) and prints the table.

    .venv/bin/python bench/site.py --epsilon 10                             # the app's settings
    .venv/bin/python bench/site.py --epsilon 10 --set iterations=60         # one change
    .venv/bin/python bench/site.py --epsilon inf --set iterations=60        # the same without noise

A site's private sampling and noise come from the OS's randomness, as in a real release, so
repeating a row moves it (70.1 ± 0.7 % over three draws at one IID site at ε = 10, and 67.7 % once):
`--repeats` distils that many times and reports mean ± std over the runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.results_io import app_run_config, merge_rows, percent, score_set  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def app_request(epsilon: float, seed: int) -> dict:
    """The run config a simulated round would send its sites, at this ε and seed."""
    return {**app_run_config(), "epsilon": epsilon, "seed": seed}


def parse_overrides(pairs: list[str]) -> dict:
    """`name=value` pairs of DistillConfig fields; values parsed as JSON where they are JSON (numbers, true)."""
    from fedsynth.client.engine import DistillConfig

    fields = {f.name for f in dataclasses.fields(DistillConfig)}
    overrides = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or name not in fields:
            raise SystemExit(f"--set {pair!r}: expected NAME=VALUE with NAME one of {', '.join(sorted(fields))}")
        try:
            overrides[name] = json.loads(value)
        except json.JSONDecodeError:
            overrides[name] = value
    return overrides


def run_row(args: argparse.Namespace, overrides: dict) -> dict:
    from fedsynth.client.client_app import distill_config
    from fedsynth.client.engine import distill
    from fedsynth.common.data import load_dataset
    from fedsynth.common.ledger import Ledger
    from fedsynth.common.partition import site_dataset
    from fedsynth.common.versions import library_versions

    request = app_request(args.epsilon, args.seed)
    train, test = load_dataset(request["dataset"], train=True), load_dataset(request["dataset"], train=False)
    data = site_dataset(train, args.sites, args.site, args.partition, args.alpha, args.seed)
    config = dataclasses.replace(distill_config(request, f"site-{args.site}"), **overrides)
    runs = []
    for repeat in range(args.repeats):
        started = time.time()
        with tempfile.TemporaryDirectory(prefix="fedsynth-site-bench-") as tmp:
            ledger = Ledger.open(Path(tmp) / "ledger.jsonl", budget_epsilon=math.inf)
            result = distill(data, config, ledger, Path(tmp) / "out", device=args.device, progress=True)
        seconds = time.time() - started
        synthetic = result.synthetic
        scores = score_set(synthetic, config.front_end, test, args.eval_seeds, args.eval_epochs)
        runs.append({"seconds": seconds, "accuracy": scores["accuracy_mean"], "accuracies": scores["accuracies"],
                     "noise_multiplier": result.synthetic.claim.noise_multiplier,
                     "evaluation": scores["train_config"] | {"seeds": len(scores["accuracies"])}})
        print(f"run {repeat + 1}/{args.repeats}: {100 * runs[-1]['accuracy']:.1f} % in {seconds:.0f} s", flush=True)
    accuracies = [r["accuracy"] for r in runs]
    return {
        "dataset": request["dataset"], "partition": args.partition,
        "alpha": args.alpha if args.partition == "dirichlet" else None,
        "sites": args.sites, "site": args.site, "records": len(data), "seed": args.seed,
        "epsilon": None if math.isinf(args.epsilon) else args.epsilon, "delta": config.delta,
        "overrides": overrides, "noise_multiplier": runs[0]["noise_multiplier"],
        "accuracy_mean": statistics.fmean(accuracies),
        "accuracy_std": statistics.stdev(accuracies) if len(accuracies) > 1 else None,
        "runs": runs, "seconds": statistics.fmean(r["seconds"] for r in runs),
        "config": dataclasses.asdict(config),  # written as strict JSON: ε = ∞ becomes null
        "evaluation": runs[0]["evaluation"],
        "versions": library_versions(),
    }


def _effective_config(config: dict) -> dict:
    """A recorded DistillConfig with fields added since filled with the value rows ran with before them (their
    default where that did not change), ε left out (keyed apart)."""
    from fedsynth.client.config import FIELDS_BEFORE, DistillConfig

    defaults = {f.name: f.default for f in dataclasses.fields(DistillConfig) if f.default is not dataclasses.MISSING}
    return {k: v for k, v in {**defaults, **FIELDS_BEFORE, **config}.items() if k != "epsilon"}


def _read_by_engine(config: dict) -> dict:
    """The fields of an effective config that its engine reads (a pixel run ignores the head's settings)."""
    from fedsynth.client.config import FRONT_END, PIXELS, DistillConfig

    engine = PIXELS if config["front_end"] == "none" else FRONT_END
    read = {f.name for f in dataclasses.fields(DistillConfig) if f.metadata["engine"] in (None, engine)}
    return {k: v for k, v in config.items() if k in read}


def _changes(row: dict) -> dict:
    """Fields of the row's engine where its config differs from what the app would run today at that site and ε."""
    from fedsynth.client.client_app import distill_config

    epsilon = math.inf if row["epsilon"] is None else row["epsilon"]
    today = _effective_config(dataclasses.asdict(distill_config(app_request(epsilon, row["seed"]),
                                                                f"site-{row['site']}")))
    return {k: v for k, v in _read_by_engine(_effective_config(row["config"])).items() if today.get(k) != v}


def _key(row: dict) -> tuple:
    # keyed by the settings the row's engine ran with, not by its --set overrides: defaults move (replay became
    # the app's default), and a plain run must not replace a row measured under the old defaults
    return (row["dataset"], row["partition"], row["sites"], row["site"], row["seed"], row["epsilon"] is None,
            row["epsilon"] or 0.0, json.dumps(_read_by_engine(_effective_config(row["config"])), sort_keys=True))


def table(rows: list[dict]) -> str:
    lines = ["| partition | site | records | ε | changes from the app's settings today | σ | accuracy % (runs) "
             "| distil time |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        eps = "∞ (no noise)" if r["epsilon"] is None else f"{r['epsilon']:g}"
        changes = ", ".join(f"{k}={v}" for k, v in _changes(r).items()) or "—"
        lines.append(f"| {r['partition']} | {r['site']}/{r['sites']} | {r['records']} | {eps} | {changes} | "
                     f"{r['noise_multiplier']:.3g} | {percent(r['accuracy_mean'], r['accuracy_std'])} "
                     f"({len(r['runs'])}) | "
                     f"{r['seconds']:.0f} s |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epsilon", type=float, default=10.0, help="target ε (inf: no noise)")
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE", help="DistillConfig fields to change")
    parser.add_argument("--partition", choices=("iid", "dirichlet"), default="iid")
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--sites", type=int, default=10)
    parser.add_argument("--site", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0, help="the round's public seed (partition, site seed)")
    parser.add_argument("--repeats", type=int, default=1, help="distillations (each with fresh private noise)")
    parser.add_argument("--eval-seeds", type=int, default=1)
    parser.add_argument("--eval-epochs", type=int, default=300)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=RESULTS / "site.json")
    args = parser.parse_args()
    if not 0 <= args.site < args.sites:
        parser.error(f"--site must be in 0..{args.sites - 1}")
    row = run_row(args, parse_overrides(args.set))
    rows = merge_rows(args.out, "site", [row], _key)
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
