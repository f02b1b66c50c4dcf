"""`fedsynth keys`: what a deployment needs, private keys 0600, nothing overwritten by accident."""

import ipaddress
import stat

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedsynth.client.cli import main
from fedsynth.common.signing import load_private_key, load_public_key


def _mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_keys_for_a_federation(tmp_path):
    out = tmp_path / "keys"
    assert main(["keys", "--out", str(out), "--sites", "2", "--hosts", "link.hospital.example", "10.0.0.5"]) == 0
    for private in ("ca/ca.key", "superlink/server.key", "sites/site-0/supernode-auth.key", "sites/site-1/signing.pem"):
        assert _mode(out / private) == 0o600, private
    ca = x509.load_pem_x509_certificate((out / "ca" / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((out / "superlink" / "server.pem").read_bytes())
    ca.public_key().verify(server.signature, server.tbs_certificate_bytes, ec.ECDSA(server.signature_hash_algorithm))
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["link.hospital.example"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.5")]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # the SuperNode auth key is what flwr reads: OpenSSH EC on a NIST curve, public half registered
    auth = serialization.load_ssh_private_key((out / "sites/site-0/supernode-auth.key").read_bytes(), None)
    registered = serialization.load_ssh_public_key((out / "server/supernode-keys/site-0.pub").read_bytes())
    assert isinstance(auth, ec.EllipticCurvePrivateKey) and auth.public_key() == registered
    # the server's copy of each signing key matches the site's private key
    signing = load_private_key(out / "sites/site-1/signing.pem")
    assert signing.public_key() == load_public_key(out / "server/site-keys/site-1.pub")


def test_keys_refuse_overwrite_then_rotate_one_site(tmp_path, capsys):
    out = tmp_path / "keys"
    assert main(["keys", "--out", str(out), "--sites", "2"]) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert main(["keys", "--out", str(out), "--sites", "2"]) == 2
    assert "pass --force" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # nothing changed

    assert main(["keys", "--out", str(out), "--site-names", "site-1", "--force"]) == 0  # rotate site-1 only
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after[out / "sites/site-1/signing.pem"] != before[out / "sites/site-1/signing.pem"]
    assert after[out / "server/site-keys/site-1.pub"] != before[out / "server/site-keys/site-1.pub"]
    for kept in ("ca/ca.key", "ca/ca.crt", "superlink/server.pem", "sites/site-0/signing.pem"):
        assert after[out / kept] == before[out / kept], kept

    assert main(["keys", "--out", str(out), "--site-names", "hospital-b"]) == 0  # a new site, same CA
    assert (out / "sites/hospital-b/ca.crt").read_bytes() == before[out / "ca/ca.crt"]
    assert main(["keys", "--out", str(out), "--site-names", "../escape"]) == 2
    assert main(["keys", "--out", str(out)]) == 2  # nothing asked for

    # re-issue only the SuperLink certificate for a new host name, same CA, sites untouched
    assert main(["keys", "--out", str(out), "--hosts", "new.example.org", "--force"]) == 0
    again = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert again[out / "superlink/server.pem"] != after[out / "superlink/server.pem"]
    assert again[out / "sites/site-0/signing.pem"] == after[out / "sites/site-0/signing.pem"]
    assert again[out / "ca/ca.crt"] == after[out / "ca/ca.crt"]
