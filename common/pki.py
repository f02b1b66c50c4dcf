"""Key material for a real deployment, made with `cryptography`: a CA, the SuperLink's TLS
certificate, and per site a SuperNode authentication key (EC P-384, OpenSSH format, as
`flwr supernode register` and `flower-supernode --auth-supernode-private-key` read it) and an
Ed25519 upload-signing key.

Layout under OUT (each side copies only its own folder to its machine):

    ca/ca.key, ca/ca.crt                     stays with whoever runs the CA (offline)
    superlink/server.key, server.pem, ca.crt the coordinator's SuperLink
    server/site-keys/SITE.pub                the ServerApp's `keys-dir` (upload-signing public keys)
    server/supernode-keys/SITE.pub           to register with `flwr supernode register`
    sites/SITE/{supernode-auth.key,.pub, signing.pem, signing.pub, ca.crt}   one site's machine

Private keys are written 0600; nothing is overwritten without `force`.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedsynth.common.signing import generate_signing_key

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
CA_DAYS = 3650
SERVER_DAYS = 825  # the longest lifetime browsers and most TLS stacks still accept for a leaf


@dataclass
class KeyPlan:
    """What `make_keys` will write: files that exist already are refused unless `force`."""

    out: Path
    sites: list[str]
    hosts: list[str] = field(default_factory=lambda: list(DEFAULT_HOSTS))
    server_certificate: bool = True
    force: bool = False

    def site_dir(self, site: str) -> Path:
        return self.out / "sites" / site

    def files(self) -> list[Path]:
        paths = []
        if self.server_certificate:
            paths += [self.out / "superlink" / "server.key", self.out / "superlink" / "server.pem"]
        for site in self.sites:
            d = self.site_dir(site)
            paths += [d / "supernode-auth.key", d / "supernode-auth.pub", d / "signing.pem", d / "signing.pub",
                      self.out / "server" / "site-keys" / f"{site}.pub",
                      self.out / "server" / "supernode-keys" / f"{site}.pub"]
        return paths


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)


def _write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _pem_private(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _ca(out: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """Load the CA under out/ca, or make one. An existing CA is reused, never replaced: every site
    trusts it, so replacing it is a re-deployment, done by deleting the folder on purpose."""
    key_path, cert_path = out / "ca" / "ca.key", out / "ca" / "ca.crt"
    if key_path.exists() and cert_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        return key, x509.load_pem_x509_certificate(cert_path.read_bytes())
    if key_path.exists() or cert_path.exists():
        raise FileExistsError(f"{out / 'ca'} holds only half a CA (key or certificate); restore or remove it")
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedsynth"),
                      x509.NameAttribute(NameOID.COMMON_NAME, "fedsynth federation CA")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - dt.timedelta(minutes=5)).not_valid_after(_now() + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA384()))
    _write_private(key_path, _pem_private(key))
    _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _server_certificate(out: Path, ca_key, ca_cert: x509.Certificate, hosts: list[str]) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedsynth"),
                         x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(_now() - dt.timedelta(minutes=5))
            .not_valid_after(_now() + dt.timedelta(days=SERVER_DAYS))
            .add_extension(_san(hosts), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA384()))
    folder = out / "superlink"
    _write_private(folder / "server.key", _pem_private(key))
    _write_public(folder / "server.pem", cert.public_bytes(serialization.Encoding.PEM))
    shutil.copyfile(out / "ca" / "ca.crt", folder / "ca.crt")


def _site_keys(plan: KeyPlan, site: str) -> None:
    """SuperNode auth key (EC P-384, OpenSSH) and Ed25519 signing key; public halves copied for the server."""
    d = plan.site_dir(site)
    auth = ec.generate_private_key(ec.SECP384R1())
    auth_pub = auth.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    _write_private(d / "supernode-auth.key", auth.private_bytes(serialization.Encoding.PEM,
                                                                serialization.PrivateFormat.OpenSSH,
                                                                serialization.NoEncryption()))
    _write_public(d / "supernode-auth.pub", auth_pub + f" {site}\n".encode())
    _write_public(plan.out / "server" / "supernode-keys" / f"{site}.pub", auth_pub + f" {site}\n".encode())
    generate_signing_key(d / "signing.pem", d / "signing.pub", force=True)  # existence checked by make_keys
    _write_public(plan.out / "server" / "site-keys" / f"{site}.pub", (d / "signing.pub").read_bytes())
    shutil.copyfile(plan.out / "ca" / "ca.crt", d / "ca.crt")


def check_site_name(site: str) -> str:
    """Site names become file and folder names and Flower node-config values: keep them plain."""
    if not site or not all(ch.isalnum() or ch in "-_." for ch in site) or site.startswith("."):
        raise ValueError(f"site name {site!r}: use letters, digits, '-', '_' and '.' only")
    return site


def make_keys(plan: KeyPlan) -> list[Path]:
    """Write everything in `plan`; refuse (writing nothing) if any file exists and `force` is off."""
    for site in plan.sites:
        check_site_name(site)
    if len(set(plan.sites)) != len(plan.sites):
        raise ValueError("site names must be unique")
    existing = [p for p in plan.files() if p.exists()]
    if existing and not plan.force:
        listed = ", ".join(str(p) for p in existing[:4]) + (" ..." if len(existing) > 4 else "")
        raise FileExistsError(f"{len(existing)} key file(s) exist ({listed}); pass --force to replace them")
    ca_key, ca_cert = _ca(plan.out)
    if plan.server_certificate:
        _server_certificate(plan.out, ca_key, ca_cert, plan.hosts)
    for site in plan.sites:
        _site_keys(plan, site)
    return plan.files()
