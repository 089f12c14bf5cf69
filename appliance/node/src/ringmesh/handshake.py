"""Mutually authenticated hybrid (X25519 + ML-KEM-768) handshake, as pure functions.

    I -> R  HS_INIT    cookie(16) | i_sid | i_x25519 | i_mlkem_ek
    R -> I  HS_COOKIE  i_sid | cookie               (stateless: HMAC of address + INIT body)
    I -> R  HS_INIT    with the cookie
    R -> I  HS_RESP    i_sid | r_sid | r_x25519 | mlkem_ct | r_descriptor | r_sig
    I -> R  HS_FINISH  r_sid | AEAD_i2r(i_descriptor | i_sig)
    R -> I  DATA(READY)             | r_certificate, when r_descriptor is certified

A descriptor signed by a certified signing key (descriptor version 2) travels without its
certificate in RESP, which has no room for it: the initiator checks the transcript signature
at once and the descriptor's signature chain when READY brings the certificate
(confirm_responder), before the session counts as up. FINISH carries the initiator's
descriptor with its certificate.

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

from .certificate import CERTIFICATE_LEN, CertificateError, SigningCertificate
from .descriptor import (
    DESCRIPTOR_LEN,
    MAX_DESCRIPTOR_LEN,
    VERSION_CERTIFIED,
    Descriptor,
    DescriptorError,
)
from .reasons import CertificateFailure, HandshakeFailure
from .wire import DATAGRAM_SIZE, DG_HS_COOKIE, DG_HS_FINISH, DG_HS_INIT, DG_HS_RESP, SID_LEN

COOKIE_LEN = 16
X25519_LEN = 32
MLKEM_EK_LEN = 1184
MLKEM_CT_LEN = 1088
SIG_LEN = 64

INIT_BODY_LEN = SID_LEN + X25519_LEN + MLKEM_EK_LEN
INIT_LEN = 1 + COOKIE_LEN + INIT_BODY_LEN
RESP_LEN = 1 + 2 * SID_LEN + X25519_LEN + MLKEM_CT_LEN + DESCRIPTOR_LEN + SIG_LEN
FINISH_PLAIN_LEN = SIG_LEN + MAX_DESCRIPTOR_LEN
FINISH_LEN = 1 + SID_LEN + FINISH_PLAIN_LEN + 16
assert max(INIT_LEN, RESP_LEN, FINISH_LEN) <= DATAGRAM_SIZE


class HandshakeError(ValueError):
    """A handshake message is malformed or does not authenticate; `certificate` says why
    when the peer's signing certificate was refused."""

    def __init__(
        self, reason: HandshakeFailure, certificate: CertificateFailure | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.certificate = certificate


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
    descriptor: Descriptor  # the responder's, whose certificate READY carries


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
    r_desc = descriptor.bare()
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
    th2 = hashlib.sha256(th + r_sig).digest()
    return Response(datagram, r_sid, _derive(x_ss, kem_ss, th), th2, descriptor)


def ready_message(response: Response) -> bytes:
    """What follows MSG_READY: the responder's certificate, if its descriptor has one."""
    certificate = response.descriptor.certificate
    return b"" if certificate is None else certificate.encode()


# --- initiator, on the response -----------------------------------------------------------


@dataclass(frozen=True)
class Established:
    r_sid: bytes
    keys: SessionKeys
    peer: Descriptor  # signature chain not yet checked when awaiting_certificate
    finish: bytes
    awaiting_certificate: bytes | None  # the bare certified descriptor READY completes


def _checked(desc: Descriptor, now: float) -> Descriptor:
    try:
        desc.check_valid(now)
    except DescriptorError as exc:
        raise _descriptor_failure(exc) from None
    return desc


def _descriptor_failure(exc: DescriptorError) -> HandshakeError:
    if exc.certificate is not None:
        return HandshakeError(HandshakeFailure.BAD_CERTIFICATE, exc.certificate)
    return HandshakeError(HandshakeFailure.BAD_DESCRIPTOR)


def _verify_descriptor(raw: bytes, now: float) -> Descriptor:
    """A descriptor (with its certificate, if any) at the start of raw, checked."""
    try:
        desc, _ = Descriptor.decode_prefix(raw)
    except DescriptorError as exc:
        raise _descriptor_failure(exc) from None
    return _checked(desc, now)


def confirm_responder(bare: bytes, ready_body: bytes, now: float) -> Descriptor:
    """The responder's descriptor from RESP, its chain checked with READY's certificate."""
    try:
        certificate = SigningCertificate.decode(ready_body[:CERTIFICATE_LEN])
        desc = Descriptor.verify_bare(bare, certificate)
    except CertificateError as exc:
        raise HandshakeError(HandshakeFailure.BAD_CERTIFICATE, exc.reason) from None
    except DescriptorError as exc:
        raise _descriptor_failure(exc) from None
    return _checked(desc, now)


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
    awaiting_certificate = r_desc_raw if r_desc_raw[0] == VERSION_CERTIFIED else None
    if awaiting_certificate:
        try:
            r_desc = Descriptor.parse_unverified(r_desc_raw)
        except DescriptorError:
            raise HandshakeError(HandshakeFailure.BAD_DESCRIPTOR) from None
    else:
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
    plain = my_link_key.sign(b"finish" + th2) + my_descriptor.encode()
    plain += bytes(FINISH_PLAIN_LEN - len(plain))
    header = bytes([DG_HS_FINISH]) + r_sid
    sealed = AESGCM(keys.i2r).encrypt(bytes(12), plain, header)
    return Established(r_sid, keys, r_desc, pad(header + sealed), awaiting_certificate)


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
    desc = _verify_descriptor(plain[SIG_LEN:], now)
    _verify_sig(desc, plain[:SIG_LEN], b"finish" + th2)
    return desc
