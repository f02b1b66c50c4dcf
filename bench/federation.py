"""Federation benchmark: 10 simulated sites on Fashion-MNIST, IID and Dirichlet(α = 0.5), ε ∈ {1, 10}.

Each row is one real round on Flower's simulation engine (`fedsynth simulate`, private
SuperLink, fresh site ledgers): every site distils its share, the server checks and pools
the uploads and trains the global ConvNet-128 on the pool. Beside them, one site holding
all 60,000 training images with the same engine settings (`sites = 1`), the reference the
non-IID target is measured against (within 3 points at ε = 10). Rows go to
bench/results/federation.json; each run's metrics, privacy report and pool picture are
kept under bench/results/federation/. Prints a table and regenerates the README's.

    .venv/bin/python bench/federation.py                                  # every row
    .venv/bin/python bench/federation.py --partition dirichlet --epsilon 10
    .venv/bin/python bench/federation.py --sites 1 10 --epsilon 10
    .venv/bin/python bench/federation.py --profile cpu-b256 --sites 10 --partition dirichlet --epsilon 10
    .venv/bin/python bench/federation.py --profile gpu                    # on a CUDA machine
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.results_io import SHARED_SEED_NOTE, merge_rows, percent, read_rows, site_seeding, update_readme_block  # noqa: E402

RESULTS = ROOT / "bench" / "results"
KEPT = ("metrics.json", "privacy_report.md", "synthetic_pool.png")
# Engine and simulation settings per machine. `cpu`: the app's defaults before replay passes (its rows were
# measured so), one site at a time on 2 cores; `cpu-auto` is today's defaults.
# `gpu`: the engine at PSG's scale (ConvNet-128, 1000 × 10 releases) and two sites sharing each GPU.
PROFILES = {
    "cpu": dict(run_config="replay-epochs=0", federation_config=None),
    # The engine bench's ε = 10 lesson applied to sites: a site of ~6,000 records at ε = 10 through
    # 20 × 5 releases of 64 records per class needs only σ ≈ 0.92 (noise on each averaged class
    # gradient σ·C/B ≈ 0.014); 10 × 5 releases of 256 (q ≈ 0.43) need σ ≈ 1.8 and halve that to ≈ 0.007.
    "cpu-b256": dict(run_config="steps=10 batch-per-class=256", federation_config=None),
    # At one IID site of ~6,000 records (ε = 10, outside Flower, one seed each) 60 instead of 20 outer
    # iterations scored 70.7 against 67.7 % (σ 1.24 instead of 0.92): sites are short of image updates.
    "cpu-t60": dict(run_config="steps=60", federation_config=None),
    # Fewer coordinates to noise: at one IID site (bench/site.py, ε = 1, σ ≈ 4.6) a ConvNet-16 to match
    # gradients on scored above the app's ConvNet-32, and level with it at ε = 10, in half the time.
    "cpu-w16": dict(run_config="width=16", federation_config=None),
    "cpu-w8": dict(run_config="width=8", federation_config=None),
    "cpu-replay3": dict(run_config="replay-epochs=3", federation_config=None),
    # More replay passes, and the image learning rate decayed over them (bench/site.py first, ε = 10)
    "cpu-replay6": dict(run_config="replay-epochs=6", federation_config=None),
    "cpu-replay3-decay": dict(run_config="replay-epochs=3 replay-lr-end=0.1", federation_config=None),
    "cpu-replay6-decay": dict(run_config='replay-epochs=6 replay-lr-end=0.1 pool-weighting="uniform"',
                              federation_config=None),  # uniform pool weighting
    # The same sites; the server weighs each pooled image by its site's class signal (server/pool.py):
    # +0.7 points at ε = 10 but −1.6 at ε = 1
    "cpu-signal": dict(run_config='replay-epochs=6 replay-lr-end=0.1 pool-weighting="signal"', federation_config=None),
    # the same, the server weighing as `matched` only where the pool's median run SNR is ≥ 1 (server/pool.py):
    # today's defaults
    "cpu-auto": dict(run_config='replay-epochs=6 replay-lr-end=0.1 pool-weighting="auto"', federation_config=None),
    # the same with each site releasing only its network's last two weight layers' gradients (bench/distill.py first)
    "cpu-auto-release2": dict(run_config='replay-epochs=6 replay-lr-end=0.1 pool-weighting="auto" release-layers=2',
                              federation_config=None),
    # replay off: keeping 10,000 releases of a ConvNet-128 for it would take tens of GB per site
    "gpu": dict(run_config="steps=1000 inner-steps=10 width=128 eval-epochs=300 replay-epochs=0",
                federation_config="client-resources-num-cpus=4 client-resources-num-gpus=0.5"),
}


def run_row(sites: int, partition: str, alpha: float, epsilon: float, seed: int, extra: str,
            federation_config: str | None, profile: str = "cpu", keep_pool: Path | None = None) -> dict:
    """One simulated round; the row is read back from the server's metrics.json. `keep_pool`: a folder to
    keep the round's pooled synthetic set in (`<row name>.safetensors`), to study the server's training on it."""
    from fedsynth.common.simulation import run_simulation
    from fedsynth.common.versions import library_versions

    name = (f"sites{sites}_{partition if sites > 1 else 'all'}_eps{epsilon:g}"
            + ("" if profile == "cpu" else f"_{profile}"))
    name += f"_seed{seed}" if seed else ""   # each seed keeps its own files
    with tempfile.TemporaryDirectory(prefix="fedsynth-bench-") as tmp:
        out = Path(tmp) / "out"
        # the pixel engine's profiles (the ScatterNet front end's federated rows are bench/compare.py's)
        config = (f'front-end="none" epsilon={epsilon} partition="{partition}" alpha={alpha} seed={seed} '
                  f'min-sites={min(2, sites)} '
                  f'expected-sites={sites} policy-epsilon={max(epsilon, 10.0)} output-dir="{out}" '
                  f'keys-dir="{Path(tmp) / "keys"}" sites-dir="{Path(tmp) / "sites"}" '
                  f'anchors-file="{Path(tmp) / "anchors.json"}" {extra}').strip()
        started = time.time()
        code = run_simulation(ROOT, sites, config, federation_config=federation_config)
        seconds = time.time() - started
        if code != 0:
            raise RuntimeError(f"round {name} failed (exit {code}); see the output above")
        metrics = json.loads((out / "metrics.json").read_text())
        kept = RESULTS / "federation" / name
        kept.mkdir(parents=True, exist_ok=True)
        for file in KEPT:
            shutil.copy(out / file, kept / file)
        if keep_pool is not None:
            keep_pool.mkdir(parents=True, exist_ok=True)
            shutil.copy(out / "synthetic_pool.safetensors", keep_pool / f"{name}.safetensors")
    accepted = [s for s in metrics["sites"] if s["accepted"]]

    def mean(key: str) -> float | None:
        return statistics.fmean(s[key] for s in accepted) if accepted and all(key in s for s in accepted) else None

    return {
        "dataset": "fashion-mnist",
        "profile": profile,
        "partition": partition if sites > 1 else "all-data",
        "alpha": alpha if partition == "dirichlet" and sites > 1 else None,
        "sites": sites,
        "sites_accepted": len(accepted),
        "site_seeding": site_seeding(metrics["sites"]),
        "epsilon": epsilon,
        "max_site_epsilon": metrics.get("max_site_epsilon"),
        "delta": metrics["config"]["delta"],
        "accuracy_mean": metrics["accuracy"],
        "accuracy_std": None,  # one global model per round (seed `seed`): no spread to report
        "seeds": 1,
        "seconds": seconds,
        "seconds_per_site": mean("seconds"),
        "bytes_per_site": mean("upload_bytes"),
        "bytes_total": sum(s["upload_bytes"] for s in accepted),
        "peak_rss_mb": max((s["peak_rss_mb"] for s in accepted if "peak_rss_mb" in s), default=None),
        "outputs": f"bench/results/federation/{name}",
        "config": metrics["config"],
        "server_augment": metrics["train_config"]["augment"],
        "pool_weighting": metrics.get("pool_weighting"),  # what the server chose (`auto` resolves by the run SNR)
        "pool_run_snr": metrics.get("pool_run_snr"),
        "federation_config": federation_config,
        "seed": seed,
        "versions": library_versions(),
    }


def _key(row: dict) -> tuple:
    return (row.get("profile", "cpu"), row["epsilon"], row["sites"], row["partition"], row["seed"])


def merge(rows: list[dict], path: Path) -> list[dict]:
    return merge_rows(path, "federation", rows, _key)


def engine_bench_reference(ipc: int = 10) -> dict[tuple[float, bool], str]:
    """bench/distill.py's one-site, all-data result per (ε, evaluation with DSA?) (its longer `cpu` profile, on CPU)."""
    from bench.distill import device_kind, scores_by_protocol

    return {(r["epsilon"], with_dsa): percent(score["accuracy_mean"], score["accuracy_std"])
            for r in read_rows(RESULTS / "distill.json")
            if r["ipc"] == ipc and r.get("profile") == "cpu" and device_kind(r) == "cpu" and r["epsilon"] is not None
            and r.get("seed", 0) == 0  # distill rows are kept per distillation seed; one reference per ε
            for with_dsa, score in scores_by_protocol(r).items()}


def _server_used_dsa(row: dict) -> bool:
    """Rows from before `eval-augment` existed trained the global model with DSA."""
    return row.get("server_augment", True)


def _server_training(row: dict) -> str:
    return "with DSA" if _server_used_dsa(row) else "no augmentation"


def table(rows: list[dict]) -> str:
    lines = ["| profile | ε | sites | partition | global accuracy % | vs one site | engine bench, one site "
             "| global model trained | time per site | upload per site | peak RSS per site | round wall time |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    # the gap is read only between rounds whose global models were trained the same way
    reference = {(r.get("profile", "cpu"), r["epsilon"], _server_training(r)): r["accuracy_mean"]
                 for r in rows if r["sites"] == 1}
    engine = engine_bench_reference()
    for r in rows:
        profile = r.get("profile", "cpu")
        ref = reference.get((profile, r["epsilon"], _server_training(r)))
        gap = "—" if ref is None or r["sites"] == 1 else f"{100 * (r['accuracy_mean'] - ref):+.1f}"
        part = r["partition"] + (f" α={r['alpha']:g}" if r.get("alpha") is not None else "")
        part += " ¹" if r["sites"] > 1 and r.get("site_seeding", "shared") == "shared" else ""
        per_site = "—" if r["seconds_per_site"] is None else f"{r['seconds_per_site']:.0f} s"
        size = "—" if r["bytes_per_site"] is None else f"{r['bytes_per_site'] / 1024:.0f} KiB"
        rss = "—" if r["peak_rss_mb"] is None else f"{r['peak_rss_mb']:.0f} MB"
        lines.append(f"| {profile}{f' (seed {seed})' if (seed := r['seed']) else ''} | {r['epsilon']:g} "
                     f"| {r['sites']} | {part} | {100 * r['accuracy_mean']:.1f} | {gap} "
                     f"| {engine.get((r['epsilon'], _server_used_dsa(r)), '—') if profile == 'cpu' else '—'} "
                     f"| {_server_training(r)} | {per_site} "
                     f"| {size} | {rss} | {r['seconds'] / 60:.1f} min |")
    if any(r["sites"] > 1 and r.get("site_seeding", "shared") == "shared" for r in rows):
        lines.append(SHARED_SEED_NOTE)
    return "\n".join(lines)


def update_readme(rows: list[dict]) -> None:
    update_readme_block("federation", table(rows))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", type=int, nargs="*", default=[1, 10], help="1 = one site with all the data")
    parser.add_argument("--partition", nargs="*", choices=("iid", "dirichlet"), default=["iid", "dirichlet"])
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--epsilon", type=float, nargs="*", default=[10.0, 1.0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu",
                        help="cpu: the app's defaults; cpu-b256: half the releases, 4× the records each; "
                             "cpu-t60: three times the outer iterations; "
                             "cpu-w16 / cpu-w8: ConvNet-16 / -8 at the sites; "
                             "cpu-replay3: three replay passes over each site's releases; "
                             "cpu-replay6-decay: today's app (six decayed replay passes); "
                             "cpu-signal: the same, pool weighted by the sites' class signal; "
                             "cpu-auto: weighted only where it carried signal; "
                             "gpu: PSG-scale engine, two sites per GPU")
    parser.add_argument("--run-config", default="", help="further overrides of [tool.flwr.app.config] for every row")
    parser.add_argument("--federation-config", help='Flower simulation settings (replace the profile\'s), '
                        'e.g. "client-resources-num-cpus=1"')
    parser.add_argument("--out", type=Path, default=RESULTS / "federation.json")
    parser.add_argument("--keep-pool", type=Path,
                        help="folder to keep each round's pooled synthetic set in (not committed)")
    parser.add_argument("--readme-only", action="store_true", help="only regenerate the README table from the JSON")
    args = parser.parse_args()

    rows = read_rows(args.out)
    profile = PROFILES[args.profile]
    if not args.readme_only:
        for epsilon in args.epsilon:
            for sites in args.sites:
                for partition in (["iid"] if sites == 1 else args.partition):
                    row = run_row(sites, partition, args.alpha, epsilon, args.seed,
                                  f"{profile['run_config']} {args.run_config}".strip(),
                                  args.federation_config or profile["federation_config"], args.profile,
                                  args.keep_pool)
                    rows = merge([row], args.out)
                    print(table(rows), flush=True)
    if rows:
        print(table(rows))
        update_readme(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
