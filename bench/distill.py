"""Engine benchmark: one site holding all of Fashion-MNIST's training set.

Rows: IPC ∈ {1, 10} × ε ∈ {1, 10, no noise}, δ = 1e-5. Each row runs in its own process
(so peak memory is its own), distils with the profile's settings, evaluates the set on
the real test split over 3 seeds, and is merged into bench/results/distill.json; the set
itself is kept under bench/results/sets/. Prints a table with PSG's published figure.

    .venv/bin/python bench/distill.py --profile cpu                 # all rows, ≤ 30 min each on 2 cores
    .venv/bin/python bench/distill.py --profile cpu --ipc 10 --epsilon 10
    .venv/bin/python bench/distill.py --profile paper --device cuda # PSG's scale, for a GPU
    .venv/bin/python bench/distill.py --profile cpu-t120-replay3-release2 --ipc 10 --epsilon 1 10  # best on 2 cores
    .venv/bin/python bench/distill.py --reevaluate                  # kept sets, today's evaluation protocol
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.results_io import merge_rows, percent, score_set, update_readme_block  # noqa: E402

RESULTS = ROOT / "bench" / "results"
SETS = RESULTS / "sets"

# Engine settings per profile (DistillConfig fields) and the evaluation protocol.
CPU_PROFILE = dict(distill=dict(front_end="none", width=32, iterations=120, inner_steps=5, net_steps=1,
                                batch_per_class=64.0,
                                clip_norm=1.0, lr_images=1.0,
                                release_layers=0),  # every parameter, as its rows were measured
                   eval_epochs=300,
                   # At ε = 10 the 600 releases of 64 records need only σ ≈ 0.55, where DP-SGD spends its budget
                   # badly; 300 releases of 256 records (σ ≈ 0.76) cut the noise per averaged gradient 3× and scored
                   # 75.0 vs 72.7 %.
                   by_epsilon={10.0: dict(iterations=60, batch_per_class=256.0)})


def _cpu_variant(**changes) -> dict:
    """The cpu profile with some engine fields changed."""
    return {**CPU_PROFILE, "distill": {**CPU_PROFILE["distill"], **changes}}


def _larger_releases(k: int, **changes) -> dict:
    """A cpu variant with k× the expected records per release and 1/k of the outer iterations, at every ε."""
    def scaled(fields: dict) -> dict:
        return {"iterations": fields["iterations"] // k, "batch_per_class": fields["batch_per_class"] * k}
    base = {**CPU_PROFILE["distill"], **changes}
    return {**CPU_PROFILE, "distill": {**base, **scaled(base)},
            "by_epsilon": {eps: scaled(over) for eps, over in CPU_PROFILE["by_epsilon"].items()}}


PROFILES = {
    "cpu": CPU_PROFILE,
    # matching on a narrower ConvNet (fewer coordinates to noise: 7,312 / 2,504 against 23,840)
    "cpu-w16": _cpu_variant(width=16),
    "cpu-w8": _cpu_variant(width=8),
    # replay passes over the kept releases after the run (free post-processing)
    "cpu-replay3": _cpu_variant(replay_epochs=3),
    # six replay passes with the image learning rate decaying to a tenth (the federation's best at ε = 10)
    "cpu-replay6-decay": _cpu_variant(replay_epochs=6, replay_lr_end=0.1),
    # the same on a wider matching network (the noiseless ceiling's suspect); for a GPU: a ConvNet-128 run keeps
    # 11 × 0.3 M floats per release for the replay (4–8 GB), so no mid-run checkpoints write them to disk
    "w64-replay6-decay": _cpu_variant(width=64, replay_epochs=6, replay_lr_end=0.1, checkpoint_every=1000),
    "w128-replay6-decay": _cpu_variant(width=128, replay_epochs=6, replay_lr_end=0.1, checkpoint_every=1000),
    # fewer, larger releases on the wider networks (noise per averaged gradient down, σ up): k× the records per
    # release and 1/k of the outer iterations of the cpu profile at each ε
    **{f"w{w}-b{k}x-replay6-decay":
       _larger_releases(k, width=w, replay_epochs=6, replay_lr_end=0.1, checkpoint_every=1000)
       for w in (64, 128) for k in (2, 4)},
    # releasing (and matching) only the last N weight layers' gradients: the same noise per coordinate on fewer
    # coordinates that share the whole clip norm; N = 1 (the classifier) is in effect DP distribution matching
    **{f"cpu-replay3-release{n}": _cpu_variant(replay_epochs=3, release_layers=n) for n in (1, 2, 3)},
    **{f"w{w}-replay3-release1": _cpu_variant(width=w, replay_epochs=3, release_layers=1) for w in (64, 128)},
    # one cosine per layer instead of one per output unit (rows weighed by their size, not alike under noise)
    "cpu-replay3-layercos": _cpu_variant(replay_epochs=3, match_per="layer"),
    **{f"cpu-replay3-release{n}-layercos": _cpu_variant(replay_epochs=3, release_layers=n, match_per="layer")
       for n in (1, 2)},
    # the same at a larger image learning rate: a per-layer cosine's gradient on S is about √rows (3–6×) smaller
    # than the per-unit sum's, so lr_images = 1 (tuned per unit) moves the images less
    "cpu-replay3-release2-layercos-lr5": _cpu_variant(replay_epochs=3, release_layers=2, match_per="layer",
                                                      lr_images=5.0),
    **{f"w64-replay3-release{n}": _cpu_variant(width=64, replay_epochs=3, release_layers=n) for n in (2,)},
    "cpu-replay6-decay-release2": _cpu_variant(replay_epochs=6, replay_lr_end=0.1, release_layers=2),
    # the last two layers at ε = 10 through twice the outer iterations (120 × 5 releases of 256, σ 0.88): without noise
    # 120 iterations (of 64 records) reach 78.8 %, and fewer, larger releases (b2x) scored lower, so iterations count
    "cpu-t120-replay3-release2": {**_cpu_variant(replay_epochs=3, release_layers=2),
                                  "by_epsilon": {10.0: dict(iterations=120, batch_per_class=256.0)}},
    # the last two layers with twice the records per release for half the outer iterations
    # (as `w64-b2x-…` paid at ε = 10)
    **{f"{'cpu' if w == 32 else f'w{w}'}-b2x-replay3-release2":
       _larger_releases(2, width=w, replay_epochs=3, release_layers=2, checkpoint_every=1000) for w in (32, 64)},
    # PSG: ConvNet-128, 1000 outer iterations, q = 256/N over the whole set, clip 0.1; 1000 evaluation epochs.
    "paper": dict(distill=dict(front_end="none",
                               width=128, iterations=1000, inner_steps=10, net_steps=1, batch_per_class=25.6,
                               clip_norm=0.1, release_layers=0),
                  eval_epochs=1000),
    # the ScatterNet front end: DP-SGD of a linear head on fixed wavelet features, distilled into images whose
    # features span the head, with its soft labels; evaluated by the server's model (a ridge head on the same front
    # end). q = 4096 / 60,000, 20 epochs (293 steps), C = 1 with lr 0.4 (all examples clipped: Tramèr & Boneh's
    # C = 0.1, lr 4)
    "scatter": dict(distill=dict(front_end="scatter", iterations=1), eval_epochs=None),
    # the same with the head's inputs centred on a noisy mean feature from 2 more releases, pinned (the engine's
    # default; the `scatter` rows recorded ran without it, as their config says)
    "scatter-centred": dict(distill=dict(front_end="scatter", iterations=1, mean_releases=2), eval_epochs=None),
}
# PSG's scale releasing only the last two weight layers (the engine's default), for a GPU
PROFILES["paper-release2"] = {**PROFILES["paper"], "distill": {**PROFILES["paper"]["distill"], "release_layers": 2}}
# PSG's published Fashion-MNIST figures (Dosser, ICCV 2025, Table 1; ε likely 1); None where none is published.
PSG_PUBLISHED = {(10, 1.0): 68.5}
NON_PRIVATE_DC = {1: 70.5, 10: 82.3}


def distill_settings(profile: str, epsilon: float) -> dict:
    """The profile's DistillConfig fields at this ε: its defaults with any per-ε override applied."""
    settings = PROFILES[profile]
    return {**settings["distill"], **settings.get("by_epsilon", {}).get(epsilon, {})}


def device_kind(row: dict) -> str:
    """`cuda` or `cpu`: where the row ran (rows from before the device was resolved say `auto`, and ran on CPU)."""
    return "cuda" if str(row.get("device", "")).startswith("cuda") else "cpu"


def _row_key(row: dict) -> tuple:
    return (row["dataset"], row["profile"], row["ipc"], row["epsilon"], device_kind(row), row.get("seed", 0))


def profile_label(profile: str, iterations: int | None, epsilon: float) -> str:
    """The row's profile name: the profile's own, or e.g. `paper-300it` when a shorter run was asked for."""
    if iterations is None or iterations == distill_settings(profile, epsilon)["iterations"]:
        return profile
    return f"{profile}-{iterations}it"


def of_profile(row: dict, profile: str) -> bool:
    """Whether a row ran `profile`, at its own length or shortened (`profile_label`)."""
    return row["profile"] == profile or row["profile"].startswith(f"{profile}-")


def run_row(profile: str, ipc: int, epsilon: float, seeds: int, device: str, seed: int,
            iterations: int | None = None) -> dict:
    """Distil and evaluate one configuration in this process; return its result row.

    `iterations` shortens (or lengthens) the profile's run, e.g. to fit a lent GPU's time;
    σ is calibrated for the count actually run, and the row is labelled apart (`profile_label`).
    """
    from fedsynth.client.engine import DistillConfig, distill
    from fedsynth.common.runtime import resolve_device
    from fedsynth.common.data import load_fashion_mnist
    from fedsynth.common.ledger import Ledger
    from fedsynth.common.synthetic_set import SET_FILE, CLAIM_FILE, PICTURE_FILE
    from fedsynth.common.versions import library_versions

    settings = PROFILES[profile]
    fields = {**distill_settings(profile, epsilon), **({"iterations": iterations} if iterations else {})}
    config = DistillConfig(ipc=ipc, epsilon=epsilon, delta=1e-5, seed=seed, **fields)
    label = profile_label(profile, iterations, epsilon)
    dev = resolve_device(device)
    train, test = load_fashion_mnist(train=True), load_fashion_mnist(train=False)
    with tempfile.TemporaryDirectory() as tmp:
        ledger = Ledger.open(Path(tmp) / "ledger.jsonl", budget_epsilon=math.inf)
        started = time.time()
        result = distill(train, config, ledger, Path(tmp) / "set", device=dev, dataset_label="fashion-mnist")
        distill_seconds = time.time() - started
        name = f"{label}_ipc{ipc}_eps{'inf' if math.isinf(epsilon) else f'{epsilon:g}'}"
        name += "_cuda" if dev.type == "cuda" else ""   # a GPU row sits beside the CPU row
        name += f"_seed{seed}" if seed else ""           # and another distillation seed's beside seed 0's
        SETS.mkdir(parents=True, exist_ok=True)
        for src, suffix in ((SET_FILE, ".safetensors"), (CLAIM_FILE, ".claim.json"), (PICTURE_FILE, ".png")):
            shutil.copy(Path(tmp) / "set" / src, SETS / f"{name}{suffix}")
    started = time.time()
    synthetic = result.synthetic
    evaluation = score_set(synthetic, config.front_end, test, seeds, settings["eval_epochs"], dev)
    eval_seconds = time.time() - started
    claim = synthetic.claim
    return {
        "dataset": "fashion-mnist",
        "method": "fedsynth",
        "partition": "one-party",
        "front_end": config.front_end,
        "soft_labels": synthetic.soft_labels is not None,
        "bytes_total": set_bytes(synthetic),
        "profile": label,
        "ipc": ipc,
        "epsilon": None if math.isinf(epsilon) else epsilon,
        "claimed_epsilon": claim.epsilon if claim.private else None,
        "delta": 1e-5,
        "noise_multiplier": claim.noise_multiplier,
        "sample_rate": claim.sample_rate,
        "steps": claim.releases,  # composed releases T·K (the rows' key predates the claim's name for it)
        "accuracy_mean": evaluation["accuracy_mean"],
        "accuracy_std": evaluation["accuracy_std"],
        "accuracies": evaluation["accuracies"],
        "seconds": distill_seconds,
        "eval_seconds": eval_seconds,
        "iterations_per_second": (config.iterations if config.front_end == "none" else claim.releases)
        / distill_seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "psg_published": PSG_PUBLISHED.get((ipc, epsilon)),
        "dc_non_private": NON_PRIVATE_DC.get(ipc),
        "set": f"bench/results/sets/{name}.safetensors",
        "config": dict(claim.config or {}),
        "eval_epochs": settings["eval_epochs"],
        "eval_augment": evaluation["train_config"].get("augment", False),
        "eval_model": evaluation["train_config"].get("model", "ConvNet-128"),
        "seed": seed,
        "device": dev.type,
        "versions": library_versions(),
    }


def set_bytes(synthetic) -> int:
    """Bytes of a set on the wire: one byte per pixel, 8 per label, 4 per soft-label entry."""
    soft = 0 if synthetic.soft_labels is None else 4 * synthetic.soft_labels.numel()
    return synthetic.images.numel() + 8 * synthetic.labels.numel() + soft


def reevaluate_row(row: dict, seeds: int, device: str) -> dict:
    """Train fresh networks on a kept set with today's evaluation protocol; the set and its distillation stay as
    they were."""
    from fedsynth.common.runtime import resolve_device
    from fedsynth.common.data import load_fashion_mnist
    from fedsynth.common.evaluation import TrainConfig, evaluate_synthetic
    from fedsynth.common.synthetic_set import load_synthetic_set

    synthetic = load_synthetic_set(ROOT / row["set"])
    started = time.time()
    evaluation = evaluate_synthetic(synthetic.images, synthetic.labels, load_fashion_mnist(train=False), seeds,
                                    TrainConfig(epochs=row["eval_epochs"]), resolve_device(device))
    previous = {key: row.get(key) for key in ("accuracy_mean", "accuracy_std", "accuracies")}
    previous["eval_augment"] = row.get("eval_augment") is not False  # rows from before the field used DSA
    return {**row, "accuracy_mean": evaluation["accuracy_mean"], "accuracy_std": evaluation["accuracy_std"],
            "accuracies": evaluation["accuracies"], "eval_seconds": time.time() - started,
            "eval_augment": evaluation["train_config"]["augment"], "earlier_evaluation": previous}


def scores_by_protocol(row: dict) -> dict[bool, dict]:
    """A row's scores keyed by "evaluation trained with DSA?" (rows from before `eval_augment` existed used DSA)."""
    found = {}
    for score in (row, row.get("earlier_evaluation") or {}):
        if score.get("accuracy_mean") is not None:
            found[score.get("eval_augment") is not False] = score
    return found


def merge(rows: list[dict], path: Path) -> list[dict]:
    return merge_rows(path, "distill", rows, _row_key,
                      lambda r: (r["profile"], r["ipc"], r["epsilon"] is None, r["epsilon"] or 0, device_kind(r),
                                 r.get("seed", 0)))


def table(rows: list[dict]) -> str:
    lines = ["| profile | device | IPC | ε | accuracy % | same set, DSA in evaluation | PSG published | distill time "
             "| it/s | peak RSS |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        eps = "∞ (no noise)" if r["epsilon"] is None else f"{r['epsilon']:g}"
        psg = "—" if r.get("psg_published") is None else f"{r['psg_published']}"
        dsa = scores_by_protocol(r).get(True)
        dsa = "—" if dsa is None else percent(dsa["accuracy_mean"], dsa["accuracy_std"])
        seed = f" (seed {r['seed']})" if r.get("seed") else ""
        lines.append(f"| {r['profile']}{seed} | {device_kind(r)} | {r['ipc']} | {eps} "
                     f"| {percent(r['accuracy_mean'], r['accuracy_std'])} "
                     f"| {dsa} | {psg} | {r['seconds'] / 60:.1f} min | {r['iterations_per_second']:.2f} "
                     f"| {r['peak_rss_mb']:.0f} MB |")
    return "\n".join(lines)


def design(row: dict) -> tuple[str, str, str, str]:
    """A row's place in the design space: front end, the network its releases are matched through, what the
    images are matched at, and the labels they carry."""
    config, labels = row.get("config") or {}, "soft" if row.get("soft_labels") else "hard"
    if row.get("front_end", "none") == "scatter":
        return "ScatterNet", "linear head, one DP-SGD run", "the DP head's logit map (span)", labels
    matched_at = "a replayed trajectory" if config.get("replay_epochs") else "random network draws"
    return "pixels", f"ConvNet-{config.get('width', 128)}, gradient matching", matched_at, labels


def design_table(rows: list[dict]) -> str:
    """The best measured profile of each design point (front end × matching × labels × IPC × ε), one party on
    all of Fashion-MNIST: what the defaults are read from."""
    best: dict[tuple, dict] = {}
    for r in rows:
        if r.get("dataset", "fashion-mnist") != "fashion-mnist" or r.get("partition", "one-party") != "one-party":
            continue
        point = (*design(r), r["ipc"], math.inf if r["epsilon"] is None else r["epsilon"], device_kind(r))
        if point not in best or r["accuracy_mean"] > best[point]["accuracy_mean"]:
            best[point] = r
    lines = ["| front end | released through | images matched at | labels | IPC | ε | accuracy % | bytes "
             "| best profile | distill time | device |", "|---|---|---|---|---|---|---|---|---|---|---|"]

    def order(point: tuple) -> tuple:  # ScatterNet first, then the matching networks by width
        return (point[0] != "ScatterNet", (best[point].get("config") or {}).get("width", 0), *point[2:])

    for point in sorted(best, key=order):
        r = best[point]
        eps = "∞" if math.isinf(point[5]) else f"{point[5]:g}"
        lines.append(f"| {' | '.join(point[:4])} | {point[4]} | {eps} "
                     f"| {percent(r['accuracy_mean'], r['accuracy_std'])} | {r['bytes_total'] / 1024:.0f} KiB "
                     f"| {r['profile']} "
                     f"| {r['seconds'] / 60:.1f} min | {point[6]} |")
    return "\n".join(lines)


def update_readme(rows: list[dict]) -> None:
    update_readme_block("distill", table(rows))
    update_readme_block("design-space", design_table(rows), source="_Generated by `bench/distill.py` from "
                        "`bench/results/distill.json` (each design point's best profile)._")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    parser.add_argument("--ipc", type=int, nargs="*", default=[1, 10])
    parser.add_argument("--epsilon", type=float, nargs="*", default=[1.0, 10.0, math.inf])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--iterations", type=int,
                        help="outer iterations instead of the profile's (row labelled e.g. paper-300it)")
    parser.add_argument("--out", type=Path, default=RESULTS / "distill.json")
    parser.add_argument("--one-row", action="store_true", help=argparse.SUPPRESS)  # child-process mode
    parser.add_argument("--readme-only", action="store_true", help="only regenerate the README table from the JSON")
    parser.add_argument("--reevaluate", action="store_true",
                        help="re-evaluate the kept sets of the selected rows with the current protocol "
                             "(no distillation)")
    args = parser.parse_args()

    if args.one_row:
        row = run_row(args.profile, args.ipc[0], args.epsilon[0], args.seeds, args.device, args.seed, args.iterations)
        print("ROW " + json.dumps(row, allow_nan=False))
        return 0

    if args.readme_only:
        update_readme(json.loads(args.out.read_text())["rows"])
        return 0
    if args.reevaluate:
        wanted = {(ipc, None if math.isinf(eps) else eps) for ipc in args.ipc for eps in args.epsilon}
        for row in json.loads(args.out.read_text())["rows"]:
            if row["profile"] == args.profile and (row["ipc"], row["epsilon"]) in wanted:
                print(f"== re-evaluating {row['set']}", flush=True)
                update_readme(merge([reevaluate_row(row, args.seeds, args.device)], args.out))
        print(table([r for r in json.loads(args.out.read_text())["rows"] if of_profile(r, args.profile)]))
        return 0
    rows = []
    for ipc in args.ipc:
        for eps in args.epsilon:
            cmd = [sys.executable, __file__, "--one-row", "--profile", args.profile, "--ipc", str(ipc), "--epsilon",
                   str(eps), "--seeds", str(args.seeds), "--seed", str(args.seed), "--device", args.device]
            cmd += ["--iterations", str(args.iterations)] if args.iterations else []
            print(f"== {args.profile} ipc={ipc} ε={eps:g}", flush=True)
            done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
            if done.returncode != 0:
                print(f"row failed (exit {done.returncode})", file=sys.stderr)
                continue
            rows.append(json.loads(next(line for line in done.stdout.splitlines() if line.startswith("ROW "))[4:]))
            merged = merge(rows, args.out)
            update_readme(merged)
            print(table([r for r in merged if of_profile(r, args.profile)]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
