"""TLS for `raftcore kv` and `raftcore ctl`: the --tls-cert/--tls-key/--tls-ca
options and the ssl contexts made from them.

A node with --tls-cert and --tls-key serves TLS to peers and clients alike
(one port) and connects to its peers over TLS, presenting the same
certificate. With --tls-ca as well it is mutual TLS: the node accepts only
connections that present a certificate signed by that CA (peers and clients),
and checks its peers' certificates against it. Without --tls-ca, the system's
trusted CAs verify the peers, and clients need no certificate.
"""
from __future__ import annotations

import argparse
import ssl
from typing import Optional


def add_tls_arguments(p: argparse.ArgumentParser, node: bool) -> None:
    """Adds --tls-cert, --tls-key and --tls-ca to `p` (of the node program
    if `node`, else of a client such as ctl)."""
    who = "this node's" if node else "the client's"
    p.add_argument("--tls-cert", default=None, metavar="FILE",
                   help=f"{who} certificate chain (PEM)" +
                        ("; serve and connect over TLS" if node else
                         ", for nodes that require client certificates (mutual TLS)"))
    p.add_argument("--tls-key", default=None, metavar="FILE",
                   help=f"{who} private key (PEM), with --tls-cert")
    p.add_argument("--tls-ca", default=None, metavar="FILE",
                   help="CA certificates (PEM) that " +
                        ("peers' and clients' certificates must be signed by (mutual TLS)"
                         if node else "the nodes' certificates are checked against "
                                      "(default: the system's)"))


def check_tls_arguments(p: argparse.ArgumentParser, args: argparse.Namespace,
                        node: bool) -> None:
    """Sets args.server_ssl (node only) and args.client_ssl from the TLS
    options, or p.error() naming what is wrong."""
    args.server_ssl = args.client_ssl = None
    cert, key, ca = args.tls_cert, args.tls_key, args.tls_ca
    if (cert is None) != (key is None):
        p.error("--tls-cert and --tls-key go together: give both or neither")
    if node and cert is None:
        if ca is not None:
            p.error("--tls-ca needs --tls-cert and --tls-key: a node serves TLS with its own "
                    "certificate")
        return
    if not node and cert is None and ca is None:
        return
    try:
        args.client_ssl = client_context(cert, key, ca)
        if node:
            args.server_ssl = server_context(cert, key, ca)
    except (OSError, ssl.SSLError) as exc:
        p.error(f"TLS: cannot load the certificate, key or CA ({_files(cert, key, ca)}): "
                f"{getattr(exc, 'strerror', None) or exc}")


def _files(cert: Optional[str], key: Optional[str], ca: Optional[str]) -> str:
    return ", ".join(f"{n} {v}" for n, v in (("--tls-cert", cert), ("--tls-key", key),
                                             ("--tls-ca", ca)) if v is not None)


def server_context(cert: str, key: str, ca: Optional[str]) -> ssl.SSLContext:
    """A node's serving context; with `ca`, every connection must present a
    certificate that CA signed."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    if ca is not None:
        ctx.load_verify_locations(ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(cert: Optional[str], key: Optional[str], ca: Optional[str]) -> ssl.SSLContext:
    """A connecting context (a node to its peers, or a client): verifies
    the server against `ca` (default: the system's CAs) and presents `cert`
    when given."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


def verifies_clients(ctx: Optional[ssl.SSLContext]) -> bool:
    """Whether a serving context accepts only verified client certificates."""
    return ctx is not None and ctx.verify_mode == ssl.CERT_REQUIRED
