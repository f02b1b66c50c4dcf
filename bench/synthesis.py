"""How much of the sites' DP heads their synthetic images carry to the server: the synthesis settings, apart from DP.

Every site of a Dirichlet federation trains its head exactly as the ScatterNet engine does (the app's
head settings, at the site's ε); then, for each synthesis setting, it synthesises its images and soft
labels from that head (free post-processing), and the server recovers each site's head from its set and
joins them on the released counts, by pairwise consensus, the class-wise vote and the gated vote, untempered and
with each site's logits tempered as the server's round does (`SITE_LOGIT_SCALE`). The table
sets each rule on the sets beside the same rule on the heads themselves (the ceiling a set can carry).
Writes bench/results/synthesis.json and the RESULTS block `synthesis`:

    .venv/bin/python bench/synthesis.py --epsilon 1 --settings 150:0 300:0:10:constant
    python bench/synthesis.py --device cuda --epsilon 1 --seed 1 --settings 300:0:20 --out /tmp/part.json  # a share
    .venv/bin/python bench/synthesis.py --merge /tmp/part*.json                                          # shares in
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.aggregation import accuracy, features, site_heads, vote_on_features  # noqa: E402
from bench.results_io import add_federation_arguments, app_run_config, merge_files, merge_rows, percent  # noqa: E402
from bench.results_io import field_ran_with  # noqa: E402
from bench.results_io import add_share_arguments, read_rows  # noqa: E402
from bench.results_io import app_head_settings, update_readme_block  # noqa: E402

OUT = ROOT / "bench" / "results" / "synthesis.json"


def synthesis_setting(text: str) -> dict:
    """'STEPS:CLASS_PULL[:IPC[:SCHEDULE]]' → the synthesis steps, the class-pull fraction of them, the images per
    class and the learning-rate schedule (default: the engine's)."""
    from fedsynth.client.config import DistillConfig

    steps, pull, *rest = text.split(":")
    return {"synthesis_steps": int(steps), "class_pull": float(pull), "ipc": int(rest[0]) if rest else 10,
            "synthesis_schedule": rest[1] if len(rest) > 1 else DistillConfig().synthesis_schedule}


def _key(row: dict) -> tuple:
    c = row["config"]
    return (row["epsilon"] or math.inf, row["seed"], row["sites"], c["synthesis_steps"], c["class_pull"], c["ipc"],
            field_ran_with(c, "synthesis_schedule"), field_ran_with(c, "mean_releases"))


def recovered_map(joint: torch.Tensor, front_end, setting: dict, temperature: float, seed: int,
                  device: torch.device = torch.device("cpu")) -> tuple:
    """A site's set synthesised from its head `joint` [K, D+1] as the engine does (on `device`), and the head
    the server recovers from that set on the CPU (scaled back by the temperature); with the seconds the
    synthesis took."""
    from fedsynth.client.feature_synthesis import synthesise, soft_labels
    from fedsynth.client.random_streams import generator
    from fedsynth.common.front_end.fit import fit_head
    from fedsynth.common.synthetic_set import quantise

    k = joint.shape[0]
    head = torch.nn.Linear(joint.shape[1] - 1, k)
    with torch.no_grad():
        head.weight.copy_(joint[:, :-1].float())
        head.bias.copy_(joint[:, -1].float())
    labels = torch.arange(k).repeat_interleave(setting["ipc"])
    initial = torch.randn(len(labels), 1, 28, 28, generator=generator(seed)) * 0.5  # the engine's public start
    started = time.time()
    images = quantise(synthesise(copy.deepcopy(head).to(device), copy.deepcopy(front_end).to(device), labels.to(device),
                                 steps=setting["synthesis_steps"],
                                 schedule=setting["synthesis_schedule"], initial=initial.to(device),
                                 class_pull=setting["class_pull"]))
    seconds = time.time() - started
    soft = soft_labels(head, front_end, images, temperature)
    fitted = fit_head(front_end, images, labels, k, soft).head
    return torch.cat([fitted.weight.detach(), fitted.bias.detach()[:, None]], 1).double() * temperature, seconds


def _cell(value: float | None) -> str:
    return "—" if value is None else percent(value)


def table(rows: list[dict]) -> str:
    lines = ["| ε | partition seed | sites' mean-feature releases | synthesis steps | schedule | class pull (share of "
             "steps) | IPC | each site's set / its own head | consensus of the sets | consensus of the heads | vote of "
             "the sets | vote of the heads | gated vote of the sets / of the heads | the server's tempered gated vote "
             "of the sets / of the heads | seconds per site |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=_key):
        c = r["config"]
        epsilon = "no noise" if r["epsilon"] is None else f"{r['epsilon']:g}"
        lines.append(f"| {epsilon} | {r['seed']} | {field_ran_with(c, 'mean_releases')} | {c['synthesis_steps']} | "
                     f"{field_ran_with(c, 'synthesis_schedule')} | "
                     f"{c['class_pull']:g} | "
                     f"{c['ipc']} | "
                     f"{percent(r['sets_mean'])} / {percent(r['heads_mean'])} | {percent(r['consensus_sets'])} | "
                     f"{percent(r['consensus_heads'])} | {_cell(r.get('vote_sets'))} | {_cell(r.get('vote_heads'))} | "
                     f"{_cell(r.get('gated_sets'))} / {_cell(r.get('gated_heads'))} | "
                     f"{_cell(r.get('tempered_sets'))} / {_cell(r.get('tempered_heads'))} | "
                     f"{r['seconds_per_site']:.0f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_federation_arguments(parser)
    parser.add_argument("--settings", nargs="+", metavar="STEPS:CLASS_PULL[:IPC[:SCHEDULE]]", default=[])
    parser.add_argument("--threads", type=int, default=2)
    add_share_arguments(parser, OUT, "where the heads train and the images are synthesised (cpu, cuda)")
    args = parser.parse_args()
    if args.merge:
        merge_files(OUT, "synthesis", args.merge, key=_key)
    elif args.settings:
        from fedsynth.common.data import load_fashion_mnist
        from fedsynth.common.front_end import build_front_end
        from fedsynth.common.front_end.consensus import consensus
        from fedsynth.common.front_end.vote import GATE_ITERATIONS, SITE_LOGIT_SCALE
        from fedsynth.common.versions import library_versions

        torch.set_num_threads(args.threads)
        app = app_run_config()
        train, test = load_fashion_mnist(True), load_fashion_mnist(False)
        device = torch.device(args.device)
        front_end = build_front_end("scatter", train.image_shape).eval()
        on_device = copy.deepcopy(front_end).to(device)
        train_features = features(on_device, train.images.to(device))
        test_features = features(on_device, test.images.to(device)).cpu()
        for epsilon in args.epsilon:
            head = app_head_settings(epsilon)
            heads = site_heads(train, train_features, args.sites, args.alpha, epsilon, args.seed, **head)
            released = [r.clamp_min(0) for _, _, r in heads]
            counts = torch.stack(released)
            maps = [h for h, _, _ in heads]
            for text in args.settings:
                setting = synthesis_setting(text)
                recovered, seconds = zip(*(recovered_map(h, front_end, setting, float(app["temperature"]),
                                                         1000 * args.seed + k, device) for k, h in enumerate(maps)))
                row = {"epsilon": None if math.isinf(epsilon) else epsilon, "delta": 1e-5, "sites": args.sites,
                       "alpha": args.alpha, "seed": args.seed, "front_end": "scatter",
                       "heads_mean": sum(accuracy(m, test_features, test.labels) for m in maps) / len(maps),
                       "sets_mean": sum(accuracy(m, test_features, test.labels) for m in recovered) / len(maps),
                       "consensus_heads": accuracy(consensus(maps, released), test_features, test.labels),
                       "consensus_sets": accuracy(consensus(list(recovered), released), test_features, test.labels),
                       "vote_heads": accuracy(vote_on_features(maps, counts), test_features, test.labels),
                       "vote_sets": accuracy(vote_on_features(list(recovered), counts), test_features, test.labels),
                       "gated_heads": accuracy(vote_on_features(maps, counts, GATE_ITERATIONS), test_features,
                                               test.labels),
                       "gated_sets": accuracy(vote_on_features(list(recovered), counts, GATE_ITERATIONS),
                                              test_features, test.labels),
                       "tempered_heads": accuracy(vote_on_features(maps, counts, GATE_ITERATIONS, tempered=True),
                                                  test_features, test.labels),
                       "tempered_sets": accuracy(vote_on_features(list(recovered), counts, GATE_ITERATIONS,
                                                                  tempered=True), test_features, test.labels),
                       "seconds_per_site": sum(seconds) / len(seconds), "device": str(device),
                       "versions": library_versions(),
                       "config": {**head, **setting, "temperature": float(app["temperature"]),
                                  "server_rule": "consensus, class-wise and gated vote, released counts",
                                  "site_logit_scale": SITE_LOGIT_SCALE}}
                print(json.dumps({k: v for k, v in row.items() if k != "versions"}), flush=True)
                merge_rows(args.out, "synthesis", [row], key=_key)
    rows = read_rows(args.out)
    print(table(rows))
    if args.out == OUT:
        update_readme_block("synthesis", table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
