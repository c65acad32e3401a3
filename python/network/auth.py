"""Who may talk: the shared-secret handshake (HMAC challenge-response) and
the cluster hello, both ends (the wire exchange is described in
raftcore.network.tcp's docstring, "Shared secret" and "Cluster hello").

Nothing here knows Raft. Each function works on any connection that reads
with `await readexactly(n)` and writes with `write(data)`: a
raftcore.network.framing.FrameConnection before start(), or an asyncio
StreamReader/StreamWriter pair.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from typing import Any, Optional

import msgpack

from raftcore.errors import ConfigError
from raftcore.network.framing import HEADER_SIZE, WIRE_VERSION, frame, unpack_header, unpackb

__all__ = ["AUTH_MAGIC", "AUTH_TIMEOUT", "HELLO_MAGIC", "AuthError", "check_secret",
           "client_handshake", "server_handshake", "client_hello", "hello_frame",
           "hello_cluster_id"]


#: Seconds a server gives a new connection to complete the shared-secret
#: handshake (RaftServer.start's auth_timeout default).
AUTH_TIMEOUT = 10.0

# Shared-secret authentication (see the module docstring).
AUTH_MAGIC = "raftcore-auth"
_AUTH_VERSION = 1
_AUTH_NONCE = 32                  # bytes of a nonce; a proof (SHA-256) has as many
_AUTH_CLIENT_LABEL = b"raftcore-auth/%d wire/%d client->server proof\x00" % (
    _AUTH_VERSION, WIRE_VERSION)
_AUTH_SERVER_LABEL = b"raftcore-auth/%d wire/%d server->client proof\x00" % (
    _AUTH_VERSION, WIRE_VERSION)
# Largest frame read during the handshake: a peer that has not proved itself
# cannot make the server buffer more than this.
_AUTH_MAX_FRAME = 256

# Cluster hello (see the module docstring).
HELLO_MAGIC = "raftcore-hello"
_HELLO_VERSION = 1
_MAX_CLUSTER_ID = 64


class AuthError(Exception):
    """A handshake that failed; the text says why."""


class _AuthClosed(AuthError):
    """The peer closed the connection during the handshake."""


def check_secret(secret: Any) -> Optional[bytes]:
    """The cluster secret as bytes (None: no secret); ConfigError if it is
    not usable. For other programs that speak this protocol (raftcore kv's
    client, for one) as for the transport itself."""
    if secret is None:
        return None
    if isinstance(secret, str):
        secret = secret.encode("utf-8")
    elif isinstance(secret, (bytes, bytearray, memoryview)):
        secret = bytes(secret)
    else:
        raise ConfigError(f"secret must be bytes (or str) or None, got {type(secret).__name__}")
    if not secret:
        raise ConfigError("secret must not be empty (make one with secrets.token_bytes(32))")
    return secret


def _auth_proof(secret: bytes, label: bytes, server_nonce: bytes, client_nonce: bytes) -> bytes:
    return hmac.new(secret, label + server_nonce + client_nonce, hashlib.sha256).digest()


def _auth_frame(step: str, *fields: bytes) -> bytes:
    body = msgpack.packb([AUTH_MAGIC, _AUTH_VERSION, step, *fields], use_bin_type=True)
    return frame(body)


async def _read_auth(reader: asyncio.StreamReader, step: str, nfields: int) -> list:
    """Reads handshake frame `step` and returns its `nfields` fields (nonces
    and proofs, each _AUTH_NONCE bytes); AuthError if anything else comes."""
    try:
        header = await reader.readexactly(HEADER_SIZE)
        size, version = unpack_header(header)
        if version != WIRE_VERSION:
            raise AuthError(f"expected the handshake {step}, got a frame of wire version "
                             f"{version}")
        if not 1 <= size <= _AUTH_MAX_FRAME:
            raise AuthError(f"expected the handshake {step}, got a frame of {size} bytes "
                             "(a peer without the secret?)")
        body = await reader.readexactly(size - 1)
    except asyncio.IncompleteReadError:
        raise _AuthClosed(f"the connection closed before the handshake {step}") from None
    try:
        obj = unpackb(body)
    except Exception:
        obj = None
    if type(obj) is not list or len(obj) < 3 or obj[0] != AUTH_MAGIC:
        raise AuthError(f"expected the handshake {step}, got another frame (a peer without "
                         "the secret?)")
    if type(obj[1]) is not int or obj[1] != _AUTH_VERSION:
        raise AuthError(f"handshake version {obj[1]!r}, this node speaks {_AUTH_VERSION}")
    fields = obj[3:]
    if (obj[2] != step or len(fields) != nfields
            or any(type(f) is not bytes or len(f) != _AUTH_NONCE for f in fields)):
        raise AuthError(f"expected the handshake {step}, got a malformed handshake frame")
    return fields


async def client_handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                            secret: bytes) -> None:
    """The client's side of the handshake: answers the server's challenge,
    then checks the server's proof. Raises AuthError."""
    try:
        server_nonce, = await _read_auth(reader, "challenge", 1)
    except _AuthClosed:
        raise AuthError("the server closed the connection before sending its challenge") \
            from None
    client_nonce = secrets.token_bytes(_AUTH_NONCE)
    writer.write(_auth_frame("answer", client_nonce, _auth_proof(
        secret, _AUTH_CLIENT_LABEL, server_nonce, client_nonce)))
    try:
        proof, = await _read_auth(reader, "confirm", 1)
    except _AuthClosed:
        raise AuthError("the server refused our proof and closed the connection: it holds "
                         "a different secret (its log says why)") from None
    expected = _auth_proof(secret, _AUTH_SERVER_LABEL, server_nonce, client_nonce)
    if not hmac.compare_digest(proof, expected):
        raise AuthError("the server's proof does not match: it holds a different secret")


def hello_frame(cluster_id: Optional[str]) -> bytes:
    body = msgpack.packb([HELLO_MAGIC, _HELLO_VERSION, cluster_id], use_bin_type=True)
    return frame(body)


def hello_cluster_id(obj: Any) -> Any:
    """The cluster id of a well-formed hello (None or a string); raises
    ValueError for anything else."""
    if type(obj) is not list or len(obj) != 3 or obj[0] != HELLO_MAGIC:
        raise ValueError("not a cluster hello")
    cid = obj[2]
    if obj[1] != _HELLO_VERSION or not (
            cid is None or (type(cid) is str and 0 < len(cid) <= _MAX_CLUSTER_ID)):
        raise ValueError(f"malformed cluster hello {obj!r:.200}")
    return cid


async def client_hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       cluster_id: str) -> Optional[str]:
    """Sends this node's cluster id and returns the server's (None if it has
    none yet). Raises AuthError if the answer is not a hello."""
    writer.write(hello_frame(cluster_id))
    try:
        size, version = unpack_header(await reader.readexactly(HEADER_SIZE))
        if version != WIRE_VERSION or not 1 <= size <= _AUTH_MAX_FRAME:
            raise AuthError(f"expected the cluster hello, got a frame of wire version "
                            f"{version} and {size} bytes")
        body = await reader.readexactly(size - 1)
    except asyncio.IncompleteReadError:
        raise AuthError("the server closed the connection instead of answering the "
                        "cluster hello") from None
    try:
        return hello_cluster_id(unpackb(body))
    except Exception as exc:
        raise AuthError(f"expected the cluster hello: {exc}") from None


async def server_handshake(conn: Any, secret: bytes, timeout: float) -> Optional[str]:
    """The server's side of the shared-secret handshake on `conn` (read with
    readexactly, written with write): a reason to close the connection, or
    None once the peer has proved it holds the secret."""
    server_nonce = secrets.token_bytes(_AUTH_NONCE)
    conn.write(_auth_frame("challenge", server_nonce))
    try:
        client_nonce, proof = await asyncio.wait_for(_read_auth(conn, "answer", 2), timeout)
    except asyncio.TimeoutError:
        return f"authentication failed: no handshake answer within {timeout}s"
    except AuthError as exc:
        return f"authentication failed: {exc}"
    expected = _auth_proof(secret, _AUTH_CLIENT_LABEL, server_nonce, client_nonce)
    if not hmac.compare_digest(proof, expected):
        return ("authentication failed: the peer's proof does not match this node's "
                "secret (it holds another one)")
    conn.write(_auth_frame("confirm", _auth_proof(
        secret, _AUTH_SERVER_LABEL, server_nonce, client_nonce)))
    return None
