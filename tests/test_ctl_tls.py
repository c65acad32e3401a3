"""`raftcore kv` and `raftcore ctl` over mutual TLS, as real processes: the
nodes replicate over TLS with certificates signed by a test CA, ctl with a
client certificate of that CA reads and changes the cluster (a verified
client certificate is what allows admin requests here: no secret, no
--insecure-admin), and clients without such a certificate are turned away.
"""
from __future__ import annotations

import datetime
import ipaddress
import json

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kv_harness import HOST, KvCluster, kv_test, until
from test_ctl_process import ctl, ctl_ok, endpoints, start_joining, voters_are


def _write_key(path, key) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


def _certificate(subject: str, key, issuer: str, issuer_key, ca: bool):
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
         .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(days=1))
         .not_valid_after(now + datetime.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        b = b.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address(HOST))]), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _issue(d, name: str, ca_name: str, ca_key) -> None:
    """name.pem and name.key: a certificate for 127.0.0.1 signed by ca_key."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _certificate(name, key, ca_name, ca_key, ca=False)
    (d / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(d / f"{name}.key", key)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A directory with ca.pem, node.pem/.key (signed by the CA, for
    127.0.0.1), and stranger.pem/.key (signed by another CA)."""
    d = tmp_path_factory.mktemp("pki")
    for ca_name, issued in (("ca", "node"), ("other-ca", "stranger")):
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = _certificate(ca_name, ca_key, ca_name, ca_key, ca=True)
        (d / f"{ca_name}.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        _issue(d, issued, ca_name, ca_key)
    return d


def tls_args(d, name: str = "node") -> list[str]:
    return ["--tls-cert", str(d / f"{name}.pem"), "--tls-key", str(d / f"{name}.key"),
            "--tls-ca", str(d / "ca.pem")]


@kv_test
async def _mutual_tls(c: KvCluster, d) -> None:
    c.start_all()
    ep = endpoints(c)
    mine = tls_args(d)

    async def healthy():
        return (await ctl(*ep, *mine, "health"))[0] == 0
    await until(healthy, "a healthy cluster over TLS", c)
    st = json.loads(await ctl_ok(c, *ep, *mine, "--json", "status"))
    assert len(st["nodes"]) == 3 and all(n["reachable"] for n in st["nodes"])
    leader = st["leader"]
    assert await ctl_ok(c, *ep, *mine, "set", "k", "v") == "OK\n"
    assert await ctl_ok(c, *ep, *mine, "get", "k") == "v\n"
    # The client certificate is what allows a leadership change here.
    follower = next(n["id"] for n in st["nodes"] if n["id"] != leader)
    assert await ctl_ok(c, *ep, *mine, "leader", "transfer", str(follower)) == \
        f"node {follower} is the leader\n"
    assert await voters_are(c, {1, 2, 3}, *mine)
    # A node joins with its certificate (which proves it may).
    start_joining(c, 4, via=leader)
    await until(lambda: voters_are(c, {1, 2, 3, 4}, *mine), "node 4 to join over TLS", c)

    # Turned away: no client certificate, one of another CA, no TLS at all.
    for args in (["--tls-ca", str(d / "ca.pem")], tls_args(d, "stranger"), []):
        rc, out, err = await ctl(*ep, "--timeout", "2", *args, "get", "k")
        assert (rc, out) == (1, ""), (args, out)
        assert err.startswith("raftcore ctl: ") and len(err.strip().splitlines()) == 1, err
    # The node trusts no other CA for its own connections either.
    rc, _, err = await ctl(*ep, "--timeout", "2", "--tls-ca", str(d / "other-ca.pem"),
                           "get", "k")
    assert rc == 1 and "CERTIFICATE_VERIFY_FAILED" in err, err
    async def all_follow():
        st = json.loads(await ctl_ok(c, *endpoints(c), *mine, "--json", "status"))
        return len(st["nodes"]) == 4 and {n["leader"] for n in st["nodes"]} == {follower}
    await until(all_follow, f"every node to follow node {follower}", c)


def test_ctl_over_mutual_tls(tmp_path, pki):
    with KvCluster(tmp_path, extra=tls_args(pki)) as c:
        _mutual_tls(c, pki)
