"""A ClientApp that misbehaves on purpose, for the loopback deployment tests only.

It runs the real `client.client_app.distil_and_upload` and then, when the SuperNode's
node config says `fault="tamper"`, changes one pixel after signing; with `fault="replay"`
it keeps its first signed reply and sends that same reply in every later run; with
`fault="hang"` (or, in simulation, when its partition-id is the run config's `hang-partition`)
it answers only after `hang-seconds`, later than the server waits.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from safetensors.torch import load_file, save_file

from client.client_app import distil_and_upload
from common.payload import from_record, to_record

app = ClientApp()


def _save(path: Path, reply: Message) -> None:
    upload = from_record(reply.content)
    save_file({"images": upload.images, "labels": upload.labels}, str(path.with_suffix(".safetensors")))
    path.write_text(json.dumps({"claim": upload.claim, "signature": upload.signature.hex(), "site": upload.site,
                                "round": list(upload.signed_round)}))


def _load(path: Path):
    saved = json.loads(path.read_text())
    tensors = load_file(str(path.with_suffix(".safetensors")))
    return to_record(tensors["images"], tensors["labels"], saved["claim"], bytes.fromhex(saved["signature"]),
                     saved["site"], *saved["round"])


@app.train()
def misbehave(msg: Message, context: Context) -> Message:
    fault = str(context.node_config.get("fault", ""))
    partition, late = context.node_config.get("partition-id"), context.run_config.get("hang-partition")
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
        upload = from_record(reply.content)
        images = upload.images.clone()
        images[0, 0, 0, 0] = (255 - round(float(images[0, 0, 0, 0]) * 255)) / 255  # another 8-bit level
        return Message(to_record(images, upload.labels, upload.claim, upload.signature, upload.site,
                                 *upload.signed_round), reply_to=msg)
    return reply
