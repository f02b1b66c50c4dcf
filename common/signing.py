"""Ed25519 signatures over a site's upload: the claim (which binds the tensors by content hash) and the round.

The signed bytes are canonical JSON of the claim plus the server's run id and nonce, so a
reply cannot be altered, attributed to another site, or replayed into another round.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


def signed_bytes(claim: dict[str, Any], run_id: str, nonce: str) -> bytes:
    """The exact bytes both sides sign and verify."""
    body = {"claim": claim, "run_id": run_id, "nonce": nonce}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def sign(private_key: Ed25519PrivateKey, claim: dict[str, Any], run_id: str, nonce: str) -> bytes:
    return private_key.sign(signed_bytes(claim, run_id, nonce))


def verify(public_key: Ed25519PublicKey, signature: bytes, claim: dict[str, Any], run_id: str, nonce: str) -> bool:
    try:
        public_key.verify(signature, signed_bytes(claim, run_id, nonce))
        return True
    except InvalidSignature:
        return False


def generate_signing_key(private_path: Path, public_path: Path, force: bool = False) -> Ed25519PublicKey:
    """Write a new Ed25519 key pair (private key 0600, PEM); refuse to overwrite unless `force`."""
    for path in (private_path, public_path):
        if path.exists() and not force:
            raise FileExistsError(f"{path} exists; pass --force to replace it")
    key = Ed25519PrivateKey.generate()
    private_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    os.chmod(private_path, 0o600)
    public_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo))
    return key.public_key()


def load_private_key(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(Path(path).read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path} is not an Ed25519 public key")
    return key
