"""fedsynth ServerApp: one round. Ask every connected site for a signed synthetic set, check each reply,
pool the accepted sets, train and evaluate the global model, write the report.
"""

from __future__ import annotations

import math
import secrets
import time
from pathlib import Path

import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedsynth.common.data import ImageDataset, load_dataset
from fedsynth.common.evaluation import TrainConfig, accuracy, front_end_accuracies, train_classifier
from fedsynth.common.versions import library_versions
from fedsynth.server.anchors import AnchorsError, LedgerAnchors
from fedsynth.server.collect import stream_replies
from fedsynth.server.front_end_model import AGGREGATIONS, fit_front_end_models
from fedsynth.server.intake import Intake
from fedsynth.server.pool import choose_weighting, median_run_snr, pool_weights, release_noise
from fedsynth.server.registry import KeyRegistry
from fedsynth.server.report import privacy_markdown, write_outputs
from fedsynth.server.round_settings import choice_of, unknown_setting
from fedsynth.server.validation import UploadPolicy

app = ServerApp()

# run-config keys only the server uses; every other key reaches the sites in the request (the engine's keys are
# defined once, in client/config.py, and a site reads the ones it knows)
SERVER_ONLY = ("output-dir", "anchors-file", "policy-epsilon", "min-sites", "expected-sites", "connect-timeout",
               "timeout", "eval-epochs", "eval-width", "eval-augment", "pool-weighting", "aggregation")

def _wait_for_sites(grid: Grid, wanted: int, enough: int, timeout: float, settle: float = 5.0) -> list[int]:
    """Node ids once `wanted` sites are connected, or once at least `enough` are and none joined for
    `settle` seconds, or whoever is connected when `timeout` runs out."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) != last:
            last, since = len(nodes), time.monotonic()
        settled = len(nodes) >= enough and time.monotonic() - since >= settle
        if len(nodes) >= wanted or settled or time.monotonic() > deadline:
            return nodes
        time.sleep(0.5)


def _fail(out: Path, sites: list[dict], cfg: dict, test: ImageDataset, reason: str) -> None:
    """Write the report of a round that cannot complete, then stop the run with `reason`."""
    write_outputs(out, metrics={"accuracy": None, "status": "failed", "reason": reason}, sites=sites, config=cfg,
                  versions=library_versions(), pool_images=torch.zeros(0, *test.image_shape),
                  pool_labels=torch.zeros(0, dtype=torch.long), classes=test.classes, model=None)
    print(f"[fedsynth] round failed: {reason}; see {out}/privacy_report.md", flush=True)
    raise RuntimeError(reason)


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = dict(context.run_config)
    out = Path(str(cfg["output-dir"]))
    min_sites = int(cfg["min-sites"])
    test = load_dataset(str(cfg["dataset"]), train=False)
    unknown = unknown_setting(cfg)
    if unknown is not None:  # before any site spends budget on this round
        _fail(out, [], cfg, test, unknown)
    weighting, aggregation = choice_of(cfg, "pool-weighting"), choice_of(cfg, "aggregation")
    try:
        anchors = LedgerAnchors(Path(str(cfg["anchors-file"])))
    except AnchorsError as err:
        _fail(out, [], cfg, test, str(err))
    nodes = _wait_for_sites(grid, int(cfg["expected-sites"]), min_sites, float(cfg["connect-timeout"]))
    if len(nodes) < min_sites:
        _fail(out, [], cfg, test, f"only {len(nodes)} site(s) connected, the round needs min-sites={min_sites}")

    run_id, nonce = str(context.run_id), secrets.token_hex(16)
    request = ConfigRecord({**{k: v for k, v in cfg.items() if k not in SERVER_ONLY}, "run-id": run_id, "nonce": nonce})
    messages = [Message(RecordDict({"request": request}), dst_node_id=node, message_type=MessageType.TRAIN)
                for node in nodes]
    print(f"[fedsynth] asked {len(nodes)} site(s) for a synthetic set (ε={cfg['epsilon']}, ipc={cfg['ipc']})",
          flush=True)

    front_end = str(cfg["front-end"])
    policy = UploadPolicy(num_classes=test.num_classes, image_shape=test.image_shape, max_ipc=int(cfg["ipc"]),
                          max_epsilon=float(cfg["policy-epsilon"]), max_delta=float(cfg["delta"]),
                          front_end=front_end)
    intake = Intake(policy, KeyRegistry(Path(str(cfg["keys-dir"]))), anchors, run_id, nonce)
    sites: list[dict] = []
    answered: set[int] = set()
    for reply in stream_replies(grid, messages, timeout=float(cfg["timeout"])):
        answered.add(reply.metadata.src_node_id)
        row, verdict = intake.judge(reply)
        eps = f", ε={row['epsilon']:.3g}" if verdict.accepted else ""
        print(f"[fedsynth] {len(answered)}/{len(nodes)} sites answered; {row['site']}: "
              f"{'accepted' + eps if verdict.accepted else 'rejected: ' + row['reason']}", flush=True)
        sites.append(row)
    for node in nodes:
        if node not in answered:
            sites.append({"site": f"node-{node}", "node": f"node-{node}", "accepted": False,
                          "reason": "no reply before the timeout"})
            print(f"[fedsynth] node-{node}: no reply before the timeout", flush=True)
    sites.sort(key=lambda s: s["site"])
    accepted = intake.accepted
    anchors.save()  # before anything else can fail: these sites' releases are spent whatever the round does

    if len(accepted) < min_sites:
        _fail(out, sites, cfg, test, f"{len(accepted)} site(s) accepted, fewer than min-sites={min_sites}")

    images = torch.cat([u.images for u in accepted])
    labels = torch.cat([u.labels for u in accepted])
    train_config = TrainConfig(epochs=int(cfg["eval-epochs"]), width=int(cfg["eval-width"]),
                               augment=bool(cfg["eval-augment"]))
    signals = [None if u.claim.class_signal is None else list(u.claim.class_signal) for u in accepted]
    noise, releases = [release_noise(u.claim) for u in accepted], [u.claim.releases for u in accepted]
    run_snr = median_run_snr(signals, noise, releases)
    chosen = choose_weighting(weighting, run_snr)
    if weighting == "auto":
        print(f"[fedsynth] pool-weighting auto: median run SNR {'unknown' if run_snr is None else f'{run_snr:.3g}'}"
              f" → {chosen}", flush=True)
    weights = pool_weights([u.labels for u in accepted], signals, test.num_classes, chosen, noise=noise)
    soft = None if front_end == "none" else torch.cat([u.soft_labels for u in accepted])
    if front_end == "none":
        model = train_classifier(images, labels, test.num_classes, train_config, seed=int(cfg.get("seed", 0)),
                                 weights=weights)
        combined, rivals, joined, acc = None, {}, {}, accuracy(model, test)
    else:  # the sites' heads on their front end, recovered from their soft labels, joined by `aggregation`
        asked = [aggregation, *(other for other in AGGREGATIONS if other != aggregation)]  # others recorded beside it
        models, joined = fit_front_end_models(front_end, accepted, test.num_classes, test.image_shape,
                                              head_batch=float(cfg["head-batch"]), weights=weights,
                                              aggregations=asked)
        combined, *others = models
        acc, *scores = front_end_accuracies(list(models.values()), test)
        model, rivals = models[combined], dict(zip(others, scores))
    other_accuracy = {f"{other}_accuracy": score for other, score in rivals.items()}
    worst = max((s.get("epsilon") or math.inf) if s["accepted"] else 0.0 for s in sites)
    metrics = {"accuracy": acc, "status": "completed", "sites_accepted": len(accepted), "sites_asked": len(nodes),
               "pool_size": len(labels), "max_site_epsilon": None if math.isinf(worst) else worst,
               "train_config": train_config.__dict__ if front_end == "none" else
               {"model": f"{front_end} + ridge head", "soft_labels": True}, "front_end": front_end,
               "aggregation": combined, **other_accuracy,
               "pool_weighting": "uniform" if weights is None else chosen,
               "pool_weighting_asked": weighting, "pool_run_snr": run_snr}
    write_outputs(out, metrics=metrics, sites=sites, config=cfg, versions=library_versions(), pool_images=images,
                  pool_labels=labels, classes=test.classes, model=model, pool_weights=weights, pool_soft_labels=soft,
                  pool_sites=joined.get("sites"), pool_class_counts=joined.get("class_counts"),
                  pool_temperatures=joined.get("temperatures"), pool_aggregation=combined if joined else None)
    print("\n" + privacy_markdown(sites), flush=True)
    beside = "".join(f", {other} {100 * score:.2f} %" for other, score in rivals.items())
    print(f"[fedsynth] global model accuracy {100 * acc:.2f} % on {test.name} test"
          f"{f' ({combined}{beside})' if combined else ''} from {len(accepted)} site(s), "
          f"{len(labels)} synthetic images; outputs in {out}", flush=True)
