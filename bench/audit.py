"""Audit benchmark: the empirical lower bound on ε beside the claimed one, at ε ∈ {1, 10, ∞}.

Each row runs the one-run canary audit (`fedsynth audit --empirical`, Steinke, Nasr &
Jagielski 2023) on Fashion-MNIST: m canaries drawn from the training set, each in the
site's data with probability ½, the engine run once, the guesses turned into a 95 %
lower bound on ε; plus the loss-threshold membership attack on a model trained on the
release. Writes bench/results/audit.json, prints a table and regenerates the README's.

    .venv/bin/python bench/audit.py                       # all rows, a few minutes each on 2 cores
    .venv/bin/python bench/audit.py --epsilon inf --canaries 2000
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.results_io import merge_rows, read_rows, update_readme_block  # noqa: E402

RESULTS = ROOT / "bench" / "results"
# The audited pipeline: the engine's defaults at the CPU benchmark's width, fewer outer iterations.
ENGINE = dict(front_end="none", ipc=10, width=32, iterations=100, inner_steps=5, every_class_populated=False)


def run_row(epsilon: float, canaries: int, base_records: int, seed: int, device: str) -> dict:
    from fedsynth.client.engine import DistillConfig
    from fedsynth.client.empirical_audit import run_empirical_audit
    from fedsynth.common.data import load_fashion_mnist

    config = DistillConfig(epsilon=epsilon, delta=1e-5, seed=seed, **ENGINE)
    row = run_empirical_audit(load_fashion_mnist(train=True), config, canaries, base_records, progress=True,
                              report_dir=RESULTS / "audit" / f"eps{'inf' if math.isinf(epsilon) else f'{epsilon:g}'}",
                              device=device)
    row["epsilon"] = row["claimed_epsilon"]
    row["target_epsilon"] = None if math.isinf(epsilon) else epsilon
    return row


def _key(row: dict) -> tuple:
    return (row["target_epsilon"] is None, row["target_epsilon"] or 0.0, row["canaries"], row["base_records"])


def merge(rows: list[dict], path: Path) -> list[dict]:
    return merge_rows(path, "audit", rows, _key)


def table(rows: list[dict]) -> str:
    lines = ["| target ε | claimed ε (Opacus RDP) | recomputed ε (PLD) | empirical lower bound (95 %) | guesses right "
             "| MIA AUC | TPR @ 1 % FPR | canaries (+ base records) | time |",
             "|---|---|---|---|---|---|---|---|---|"]

    def show(v, f: str = ".2f") -> str:
        return "∞ (no noise)" if v is None else format(v, f)

    for r in rows:
        lines.append(f"| {show(r['target_epsilon'], 'g')} | {show(r['claimed_epsilon'])} "
                     f"| {show(r['recomputed_epsilon'])} "
                     f"| **{r['empirical_epsilon_lower_bound']:.2f}** | {r['correct']}/{r['guesses']} "
                     f"| {r['mia_auc']:.3f} "
                     f"| {r['tpr_at_1pct_fpr']:.3f} | {r['canaries']} (+{r['base_records']}) "
                     f"| {r['seconds'] / 60:.1f} min |")
    return "\n".join(lines)


def update_readme(rows: list[dict]) -> None:
    update_readme_block("audit", table(rows))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epsilon", type=float, nargs="*", default=[1.0, 10.0, math.inf])
    parser.add_argument("--canaries", type=int, default=1000)
    parser.add_argument("--base-records", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=RESULTS / "audit.json")
    parser.add_argument("--readme-only", action="store_true", help="only regenerate the README table from the JSON")
    args = parser.parse_args()

    rows = read_rows(args.out)
    if not args.readme_only:
        for epsilon in args.epsilon:
            rows = merge([run_row(epsilon, args.canaries, args.base_records, args.seed, args.device)], args.out)
            print(table(rows), flush=True)
    print(table(rows))
    update_readme(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
