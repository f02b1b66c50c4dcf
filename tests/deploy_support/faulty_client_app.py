"""A ClientApp that misbehaves on purpose, for the simulation and loopback deployment tests only.

It runs the real `fedsynth.client.client_app.distil_and_upload` and then, when the SuperNode's
node config says `fault="tamper"`, changes one pixel after signing; with `fault="replay"`
it keeps its first signed reply and sends that same reply in every later run; with
`fault="hang"` (or, in simulation, when its partition-id is the run config's `hang-partition`)
it answers only after `hang-seconds`, later than the server waits. In simulation, a site
whose partition-id is at least the run config's `hostile-from` sends, without distilling,
the crafted reply `HOSTILE[partition-id - hostile-from]`: what a hostile participant could send.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from safetensors.torch import load_file, save_file

from fedsynth.client.client_app import distil_and_upload
from fedsynth.common.claim import Claim
from fedsynth.common.payload import from_record, to_record
from fedsynth.common.signing import sign
from fedsynth.common.synthetic_set import content_hash, quantise

app = ClientApp()


def _save(path: Path, reply: Message) -> None:
    upload = from_record(reply.content, 10_000, tuple(upload_shape(reply)))
    save_file({"images": upload.images, "labels": upload.labels}, str(path.with_suffix(".safetensors")))
    path.write_text(json.dumps({"claim": upload.claim.to_json(), "signature": upload.signature.hex(),
                                "site": upload.site, "round": list(upload.signed_round)}))


def upload_shape(reply: Message) -> list[int]:
    return list(reply.content["synthetic"]["images"].shape[1:])


def _load(path: Path):
    saved = json.loads(path.read_text())
    tensors = load_file(str(path.with_suffix(".safetensors")))
    return to_record(tensors["images"], tensors["labels"], Claim.from_json(saved["claim"]),
                     bytes.fromhex(saved["signature"]), saved["site"], *saved["round"])


# ---- hostile replies: each takes the server's request and returns what the site sends ---------------
def _a_valid_claim_json(request: dict) -> tuple[torch.Tensor, torch.Tensor, dict]:
    images = quantise(torch.rand(20, 1, 28, 28))
    labels = torch.arange(10).repeat_interleave(2)
    claim = {"format": "fedsynth-claim/2", "run_id": "a" * 32, "epsilon": 1.0, "delta": 1e-5,
             "noise_multiplier": 1.0, "sample_rate": 0.01, "releases": 100, "clip_norm": 1.0, "accountant": "rdp",
             "ipc": 2, "classes": [str(c) for c in range(10)], "image_shape": [1, 28, 28], "dataset": "x",
             "sha256": content_hash(images, labels), "seed": 0, "release_dimension": 10, "ledger_seq": 1,
             "ledger_head": "b" * 64}
    return images, labels, claim


def _with_claim_text(request: dict, text: str, site: str = "hostile") -> RecordDict:
    images, labels, _ = _a_valid_claim_json(request)
    record = to_record(images, labels, _dummy_claim(images, labels), b"\0" * 64, site, str(request["run-id"]),
                       str(request["nonce"]))
    record["claim"]["json"] = text
    return record


def _dummy_claim(images, labels) -> Claim:
    _, _, claim = _a_valid_claim_json({})
    return Claim.from_json_dict({**claim, "sha256": content_hash(images, labels)})


def _claim_edit(**changes):
    def make(request: dict) -> RecordDict:
        _, _, claim = _a_valid_claim_json(request)
        return _with_claim_text(request, json.dumps({**claim, **changes}))
    return make


def _unregistered_key(request: dict) -> RecordDict:
    images, labels, _ = _a_valid_claim_json(request)
    claim = _dummy_claim(images, labels)
    run_id, nonce = str(request["run-id"]), str(request["nonce"])
    return to_record(images, labels, claim, sign(Ed25519PrivateKey.generate(), claim, run_id, nonce), "site-0",
                     run_id, nonce)


def _path_name(request: dict) -> RecordDict:
    record = _unregistered_key(request)
    record["claim"]["site"] = "../../x/attacker"
    return record


def _oversized(request: dict) -> RecordDict:
    record = _unregistered_key(request)
    record["synthetic"]["images"] = Array(dtype="uint8", shape=(10**6, 1, 28, 28), stype="numpy.ndarray",
                                          data=b"\x93NUMPY" + b"\0" * 100)
    return record


def _raise(request: dict) -> RecordDict:
    raise RuntimeError("a site's own crash\nwith a second line | and a pipe")


HOSTILE = {
    "nan": lambda r: _with_claim_text(r, json.dumps(_a_valid_claim_json(r)[2])
                                      .replace('"epsilon": 1.0', '"epsilon": NaN')),
    "deep": lambda r: _with_claim_text(r, "[" * 30_000 + "]" * 30_000),
    "huge-int": lambda r: _with_claim_text(r, json.dumps(_a_valid_claim_json(r)[2])
                                           .replace('"releases": 100', '"releases": ' + "9" * 5000)),
    "string-epsilon": _claim_edit(epsilon="1.0"),
    "fractional-releases": _claim_edit(releases=1.9),
    "huge-signal": _claim_edit(class_signal=[1e308] * 10),
    "refusal-without-site": lambda r: RecordDict({"refusal": ConfigRecord({"refused": "no"})}),
    "refusal-wrong-type": lambda r: RecordDict({"refusal": MetricRecord({"refused": 1.0})}),
    "forged-row": lambda r: RecordDict({"refusal": ConfigRecord(
        {"site": "site-9", "refused": "x |\n| site-0 | node | 1 | 1e-05 | 1 | 0.1 | 10 | yes | accepted | 1 | 1 |"})}),
    "path-name": _path_name,
    "unregistered-key": _unregistered_key,
    "oversized": _oversized,
    "wrong-records": lambda r: RecordDict({"synthetic": ConfigRecord({"images": "x"}), "claim": ArrayRecord()}),
    "float-images": lambda r: RecordDict({"synthetic": ArrayRecord({"images": Array(np.zeros((20, 1, 28, 28))),
                                                                   "labels": Array(np.zeros(20, np.int64))}),
                                          "claim": ConfigRecord({"json": "{}"})}),
    "crash": _raise,
}


@app.train()
def misbehave(msg: Message, context: Context) -> Message:
    fault = str(context.node_config.get("fault", ""))
    partition, late = context.node_config.get("partition-id"), context.run_config.get("hang-partition")
    hostile_from = context.run_config.get("hostile-from")
    if partition is not None and hostile_from is not None and int(partition) >= int(hostile_from):
        kind = list(HOSTILE)[(int(partition) - int(hostile_from)) % len(HOSTILE)]
        return Message(HOSTILE[kind](dict(msg.content["request"])), reply_to=msg)
    if partition is not None and late is not None and int(partition) == int(late):
        fault = "hang"
    if fault == "hang":
        time.sleep(float(context.run_config.get("hang-seconds", 3600)))
    kept = Path(str(context.node_config.get("home", "."))) / "kept-reply.json"
    if fault == "replay" and kept.exists():
        return Message(_load(kept), reply_to=msg)
    reply = distil_and_upload(msg, context)
    if "synthetic" not in reply.content:
        return reply
    if fault == "replay":
        _save(kept, reply)
    if fault == "tamper":
        upload = from_record(reply.content, 10_000, tuple(upload_shape(reply)))
        images = upload.images.clone()
        images[0, 0, 0, 0] = (255 - round(float(images[0, 0, 0, 0]) * 255)) / 255  # another 8-bit level
        return Message(to_record(images, upload.labels, upload.claim, upload.signature, upload.site,
                                 *upload.signed_round), reply_to=msg)
    return reply
