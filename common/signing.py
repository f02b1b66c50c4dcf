"""Ed25519 signatures over a site's upload: the claim (which binds the tensors by content hash) and the round.

The signed bytes are canonical JSON of the claim plus the server's run id and nonce, so a
reply cannot be altered, attributed to another site, or replayed into another round.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedsynth.common.claim import Claim
from fedsynth.common.errors import FedsynthError
from fedsynth.common.files import UnreadableFileError, read_regular_file


def signed_bytes(claim: Claim, run_id: str, nonce: str) -> bytes:
    """The exact bytes both sides sign and verify."""
    body = {"claim": claim.to_json_dict(), "run_id": run_id, "nonce": nonce}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def sign(private_key: Ed25519PrivateKey, claim: Claim, run_id: str, nonce: str) -> bytes:
    return private_key.sign(signed_bytes(claim, run_id, nonce))


def verify(public_key: Ed25519PublicKey, signature: bytes, claim: Claim, run_id: str, nonce: str) -> bool:
    try:
        public_key.verify(signature, signed_bytes(claim, run_id, nonce))
        return True
    except (InvalidSignature, ValueError, TypeError):  # a non-finite or odd value cannot have been signed
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


class KeyFileError(FedsynthError, ValueError):
    """A key file that is missing, unreadable or not an Ed25519 key."""


def _read_key_file(path: Path, limit: int = 16 * 1024) -> bytes:
    try:
        return read_regular_file(path, limit)
    except UnreadableFileError as err:
        raise KeyFileError(f"cannot read the key: {err}") from None


def load_private_key(path: Path) -> Ed25519PrivateKey:
    data = _read_key_file(Path(path))
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as err:
        raise KeyFileError(f"{path} is not an unencrypted PEM private key ({type(err).__name__})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} is not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    data = _read_key_file(Path(path))
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as err:
        raise KeyFileError(f"{path} is not a PEM public key ({type(err).__name__})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path} is not an Ed25519 public key")
    return key


def key_fingerprint(public_key: Ed25519PublicKey) -> str:
    """The raw 32-byte public key as hex: what identifies a site across names and files."""
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()
