"""Baseline ClientApp: a site in (DP-)FedAvg. Each round it trains the global model on its partition
(record-level DP-SGD through Opacus when the run's ε is finite) and returns the weights.

Used only to compare fedsynth with what a site would otherwise run (`bench/compare.py`);
the site's σ is calibrated once for every round the server announced, so the last round
ends at the same (ε, δ) a fedsynth site spends.
"""

from __future__ import annotations

import math
import resource
import time

import torch

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedsynth.client.client_app import site_data
from fedsynth.client.head_training import train_head
from fedsynth.client.local_training import plan_dp_sgd, train_locally
from fedsynth.common.data import ImageDataset
from fedsynth.common.front_end import build_front_end
from fedsynth.common.models import ConvNet
from fedsynth.common.runtime import resolve_device

app = ClientApp()
_FEATURES: dict[tuple, torch.Tensor] = {}  # a site's front-end features, computed once per process (fixed map)


def _features(data: ImageDataset, front_end: str, key: tuple) -> torch.Tensor:
    if key not in _FEATURES:
        _FEATURES.clear()
        _FEATURES[key] = build_front_end(front_end, data.image_shape).eval().features(data.images)
    return _FEATURES[key]


@app.train()
def train_round(msg: Message, context: Context) -> Message:
    started = time.monotonic()
    cfg = dict(msg.content["config"])
    data = site_data(dict(context.node_config), cfg)
    epsilon = float(cfg["epsilon"]) if float(cfg["epsilon"]) > 0 else math.inf  # ≤ 0 on the wire means no DP
    batch, epochs, rounds = int(cfg["batch-size"]), int(cfg["local-epochs"]), int(cfg["rounds"])
    plan = plan_dp_sgd(len(data), batch, epochs, rounds, epsilon, float(cfg["delta"]), float(cfg["clip-norm"]))
    c, h, _ = data.image_shape
    server_round = int(cfg["server-round"])
    seed = int(cfg.get("seed", 0)) * 1000 + server_round
    front_end = str(cfg.get("front-end", "none"))
    if front_end == "none":
        model = ConvNet(c, data.num_classes, h, int(cfg["width"]), norm=str(cfg.get("norm", "groupnorm")))
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        model, steps, _ = train_locally(model, data, plan, batch, epochs, float(cfg["lr"]), seed=seed,
                                        device=resolve_device("auto"))
    else:  # a linear head on the fixed front end's features, DP-SGD'd by the same mechanism
        features = _features(data, front_end, (front_end, len(data), context.node_id))
        steps = plan.steps_per_round
        model = train_head(features, data.labels, data.num_classes, plan.mechanism(1), lr=float(cfg["lr"]),
                           momentum=0.9, secret=seed, initial=msg.content["arrays"].to_torch_state_dict())
    spent = plan.epsilon_after(server_round)
    metrics = MetricRecord({"num-examples": len(data), "epsilon": -1.0 if math.isinf(spent) else spent,
                            "noise-multiplier": plan.noise_multiplier, "sample-rate": plan.sample_rate,
                            "steps": steps, "seconds": time.monotonic() - started,
                            "peak-rss-mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
    arrays = ArrayRecord({k: v.detach().cpu() for k, v in model.state_dict().items()})
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)
