"""Mutually authenticated hybrid (X25519 + ML-KEM-768) handshake, as pure functions.

    I -> R  HS_INIT    cookie(16) | i_sid | i_x25519 | i_mlkem_ek
    R -> I  HS_COOKIE  i_sid | cookie               (stateless: HMAC of address + INIT body)
    I -> R  HS_INIT    with the cookie
    R -> I  HS_RESP    i_sid | r_sid | r_x25519 | mlkem_ct | r_descriptor | r_sig
    I -> R  HS_FINISH  r_sid | AEAD_i2r(i_descriptor | i_sig)
    R -> I  DATA(READY)

th = SHA-256 over INIT body, r_sid, r_x25519, mlkem_ct, r_descriptor; the responder signs th,
the initiator signs SHA-256(th | r_sig), each with the link key that its identity-signed
descriptor certifies. Session keys = HKDF(x25519_ss | mlkem_ss, salt=th): breaking the
session needs breaking both X25519 and ML-KEM-768.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey, MLKEM768PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .descriptor import DESCRIPTOR_LEN, Descriptor, DescriptorError
from .reasons import HandshakeFailure
from .wire import DATAGRAM_SIZE, DG_HS_COOKIE, DG_HS_FINISH, DG_HS_INIT, DG_HS_RESP, SID_LEN

COOKIE_LEN = 16
X25519_LEN = 32
MLKEM_EK_LEN = 1184
MLKEM_CT_LEN = 1088
SIG_LEN = 64

INIT_BODY_LEN = SID_LEN + X25519_LEN + MLKEM_EK_LEN
INIT_LEN = 1 + COOKIE_LEN + INIT_BODY_LEN
RESP_LEN = 1 + 2 * SID_LEN + X25519_LEN + MLKEM_CT_LEN + DESCRIPTOR_LEN + SIG_LEN
FINISH_PLAIN_LEN = DESCRIPTOR_LEN + SIG_LEN
FINISH_LEN = 1 + SID_LEN + FINISH_PLAIN_LEN + 16
assert max(INIT_LEN, RESP_LEN, FINISH_LEN) <= DATAGRAM_SIZE


class HandshakeError(ValueError):
    """A handshake message is malformed or does not authenticate."""

    def __init__(self, reason: HandshakeFailure) -> None:
        super().__init__(reason)
        self.reason = reason


def pad(message: bytes) -> bytes:
    return message + os.urandom(DATAGRAM_SIZE - len(message))


def _check_size(datagram: bytes, kind: int) -> None:
    if len(datagram) != DATAGRAM_SIZE or datagram[0] != kind:
        raise HandshakeError(HandshakeFailure.MALFORMED)


@dataclass(frozen=True)
class SessionKeys:
    i2r: bytes
    r2i: bytes


# --- initiator, first message --------------------------------------------------------------


@dataclass
class InitiatorState:
    sid: bytes
    x25519: X25519PrivateKey
    mlkem: MLKEM768PrivateKey
    body: bytes  # the INIT body (sid | x25519 | ek)

    @classmethod
    def new(cls) -> InitiatorState:
        sid = os.urandom(SID_LEN)
        x = X25519PrivateKey.generate()
        k = MLKEM768PrivateKey.generate()
        body = sid + x.public_key().public_bytes_raw() + k.public_key().public_bytes_raw()
        return cls(sid, x, k, body)

    def init_datagram(self, cookie: bytes = bytes(COOKIE_LEN)) -> bytes:
        return pad(bytes([DG_HS_INIT]) + cookie + self.body)


@dataclass(frozen=True)
class ParsedInit:
    cookie: bytes
    body: bytes

    @property
    def sid(self) -> bytes:
        return self.body[:SID_LEN]


def parse_init(datagram: bytes) -> ParsedInit:
    _check_size(datagram, DG_HS_INIT)
    return ParsedInit(datagram[1 : 1 + COOKIE_LEN], datagram[1 + COOKIE_LEN : INIT_LEN])


def make_cookie(secret: bytes, addr: str, body: bytes) -> bytes:
    return hmac.digest(secret, addr.encode() + body, "sha256")[:COOKIE_LEN]


def cookie_datagram(i_sid: bytes, cookie: bytes) -> bytes:
    return pad(bytes([DG_HS_COOKIE]) + i_sid + cookie)


def parse_cookie(datagram: bytes) -> tuple[bytes, bytes]:
    _check_size(datagram, DG_HS_COOKIE)
    return datagram[1 : 1 + SID_LEN], datagram[1 + SID_LEN : 1 + SID_LEN + COOKIE_LEN]


# --- responder ------------------------------------------------------------------------------


def _derive(x_ss: bytes, kem_ss: bytes, th: bytes) -> SessionKeys:
    okm = HKDF(hashes.SHA256(), 64, salt=th, info=b"ringmesh-link-v1").derive(x_ss + kem_ss)
    return SessionKeys(okm[:32], okm[32:])


@dataclass(frozen=True)
class Response:
    datagram: bytes
    r_sid: bytes
    keys: SessionKeys
    th2: bytes


def respond(init: ParsedInit, descriptor: Descriptor, link_key: Ed25519PrivateKey) -> Response:
    """The expensive step (KEM encapsulation, X25519, signature): run only after the cookie."""
    i_x = init.body[SID_LEN : SID_LEN + X25519_LEN]
    i_ek = init.body[SID_LEN + X25519_LEN :]
    try:
        i_x_key = X25519PublicKey.from_public_bytes(i_x)
        kem_ss, kem_ct = MLKEM768PublicKey.from_public_bytes(i_ek).encapsulate()
        r_x = X25519PrivateKey.generate()
        x_ss = r_x.exchange(i_x_key)
    except ValueError:
        raise HandshakeError(HandshakeFailure.BAD_KEY) from None
    r_sid = os.urandom(SID_LEN)
    r_desc = descriptor.encode()
    th = hashlib.sha256(
        b"ringmesh-hs-v1"
        + init.body
        + r_sid
        + r_x.public_key().public_bytes_raw()
        + kem_ct
        + r_desc
    ).digest()
    r_sig = link_key.sign(b"resp" + th)
    datagram = pad(
        bytes([DG_HS_RESP])
        + init.sid
        + r_sid
        + r_x.public_key().public_bytes_raw()
        + kem_ct
        + r_desc
        + r_sig
    )
    return Response(datagram, r_sid, _derive(x_ss, kem_ss, th), hashlib.sha256(th + r_sig).digest())


# --- initiator, on the response -----------------------------------------------------------


@dataclass(frozen=True)
class Established:
    r_sid: bytes
    keys: SessionKeys
    peer: Descriptor
    finish: bytes


def _verify_descriptor(raw: bytes, now: float) -> Descriptor:
    try:
        desc = Descriptor.decode(raw)
        desc.check_valid(now)
    except DescriptorError:
        raise HandshakeError(HandshakeFailure.BAD_DESCRIPTOR) from None
    return desc


def _verify_sig(desc: Descriptor, sig: bytes, message: bytes) -> None:
    try:
        Ed25519PublicKey.from_public_bytes(desc.link_public).verify(sig, message)
    except (InvalidSignature, ValueError):
        raise HandshakeError(HandshakeFailure.BAD_SIGNATURE) from None


def resp_sid(datagram: bytes) -> bytes:
    """The initiator sid a RESP answers (cheap lookup before any crypto)."""
    _check_size(datagram, DG_HS_RESP)
    return datagram[1 : 1 + SID_LEN]


def complete(
    state: InitiatorState,
    datagram: bytes,
    my_descriptor: Descriptor,
    my_link_key: Ed25519PrivateKey,
    now: float,
) -> Established:
    _check_size(datagram, DG_HS_RESP)
    o = 1
    i_sid = datagram[o : o + SID_LEN]
    o += SID_LEN
    r_sid = datagram[o : o + SID_LEN]
    o += SID_LEN
    r_x = datagram[o : o + X25519_LEN]
    o += X25519_LEN
    kem_ct = datagram[o : o + MLKEM_CT_LEN]
    o += MLKEM_CT_LEN
    r_desc_raw = datagram[o : o + DESCRIPTOR_LEN]
    o += DESCRIPTOR_LEN
    r_sig = datagram[o : o + SIG_LEN]
    if i_sid != state.sid:
        raise HandshakeError(HandshakeFailure.UNEXPECTED)
    r_desc = _verify_descriptor(r_desc_raw, now)
    th = hashlib.sha256(b"ringmesh-hs-v1" + state.body + r_sid + r_x + kem_ct + r_desc_raw).digest()
    _verify_sig(r_desc, r_sig, b"resp" + th)
    try:
        x_ss = state.x25519.exchange(X25519PublicKey.from_public_bytes(r_x))
        kem_ss = state.mlkem.decapsulate(kem_ct)
    except ValueError:
        raise HandshakeError(HandshakeFailure.BAD_KEY) from None
    keys = _derive(x_ss, kem_ss, th)
    th2 = hashlib.sha256(th + r_sig).digest()
    plain = my_descriptor.encode() + my_link_key.sign(b"finish" + th2)
    header = bytes([DG_HS_FINISH]) + r_sid
    sealed = AESGCM(keys.i2r).encrypt(bytes(12), plain, header)
    return Established(r_sid, keys, r_desc, pad(header + sealed))


# --- responder, on the finish -------------------------------------------------------------


def finish_sid(datagram: bytes) -> bytes:
    _check_size(datagram, DG_HS_FINISH)
    return datagram[1 : 1 + SID_LEN]


def verify_finish(datagram: bytes, keys: SessionKeys, th2: bytes, now: float) -> Descriptor:
    _check_size(datagram, DG_HS_FINISH)
    header = datagram[: 1 + SID_LEN]
    try:
        plain = AESGCM(keys.i2r).decrypt(bytes(12), datagram[1 + SID_LEN : FINISH_LEN], header)
    except InvalidTag:
        raise HandshakeError(HandshakeFailure.BAD_FINISH) from None
    desc = _verify_descriptor(plain[:DESCRIPTOR_LEN], now)
    _verify_sig(desc, plain[DESCRIPTOR_LEN:], b"finish" + th2)
    return desc
