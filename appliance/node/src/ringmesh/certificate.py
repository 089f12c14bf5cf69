"""Signing-key certificates: an identity key kept offline vouches for a relay's signing key.

As Tor's offline master key: the Ed25519 identity key (the relay's did:key) stays on the
operator's machine and certifies a medium-term Ed25519 signing key made on the relay, for a
limited time (default 30 days). The relay signs its descriptors and directory votes with the
signing key and presents the certificate; a peer or client checks identity -> certificate ->
signing key, and refuses a certificate that is expired or not signed by the identity.

Wire form (137 bytes): version (1) | identity (32) | signing key (32) | expires (8, unix
seconds) | identity's Ed25519 signature over a context string and the 73 bytes before it (64).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .reasons import CertificateFailure

_CONTEXT = b"ringmesh-signing-certificate-v1"
_BODY = struct.Struct("!B32s32sQ")
VERSION = 1
CERTIFICATE_LEN = _BODY.size + 64
DEFAULT_LIFETIME = 30 * 86400  # Tor's SigningKeyLifetime default
RENEW_WITHIN = 7 * 86400  # warn (node) and renew (roles) when less than this remains
_MAX_TIME = 1 << 62


class CertificateError(ValueError):
    """A certificate that must be refused, and why (a member of CertificateFailure)."""

    def __init__(self, reason: CertificateFailure, detail: str) -> None:
        super().__init__(f"signing certificate refused: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class SigningCertificate:
    identity: bytes
    signing_public: bytes
    expires: int
    signature: bytes

    def body(self) -> bytes:
        return _BODY.pack(VERSION, self.identity, self.signing_public, self.expires)

    def encode(self) -> bytes:
        return self.body() + self.signature

    @classmethod
    def issue(
        cls, identity_key: Ed25519PrivateKey, signing_public: bytes, expires: int
    ) -> SigningCertificate:
        if len(signing_public) != 32:
            raise ValueError("the signing key must be a 32-byte Ed25519 public key")
        if not 0 < expires < _MAX_TIME:
            raise ValueError(f"expiry {expires} is outside 1..2^62")
        identity = identity_key.public_key().public_bytes_raw()
        unsigned = cls(identity, signing_public, expires, b"")
        return cls(identity, signing_public, expires, identity_key.sign(_CONTEXT + unsigned.body()))

    @classmethod
    def decode(cls, data: bytes) -> SigningCertificate:
        """Parse and check the identity's signature (not the expiry: see check_valid)."""
        if len(data) != CERTIFICATE_LEN:
            raise CertificateError(CertificateFailure.MALFORMED, "wrong length")
        version, identity, signing_public, expires = _BODY.unpack_from(data)
        if version != VERSION:
            raise CertificateError(CertificateFailure.MALFORMED, "unknown version")
        signature = data[_BODY.size :]
        try:
            Ed25519PublicKey.from_public_bytes(identity).verify(
                signature, _CONTEXT + data[: _BODY.size]
            )
            Ed25519PublicKey.from_public_bytes(signing_public)
        except (InvalidSignature, ValueError):
            raise CertificateError(
                CertificateFailure.BAD_SIGNATURE, "not signed by the identity key it names"
            ) from None
        return cls(identity, signing_public, expires, signature)

    def check_valid(self, now: float) -> None:
        if now >= self.expires:
            raise CertificateError(CertificateFailure.EXPIRED, f"expired at {self.expires}")


def parse_lifetime(text: str) -> int:
    """Seconds in '30d', '12h', '90m' or a plain number of seconds."""
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    number, unit = (text[:-1], text[-1]) if text[-1:] in units else (text, "s")
    if not number.isdigit() or int(number) == 0:
        raise ValueError(f"lifetime {text!r} is not a positive number of d, h, m or s")
    return int(number) * units[unit]


def new_identity_file(path: Path) -> Ed25519PrivateKey:
    """An identity key for the operator's machine: hex seed in a new 0600 file (encrypt it
    with ansible-vault at rest); an existing file is read, never replaced."""
    if path.exists():
        return read_identity_file(path)
    key = Ed25519PrivateKey.generate()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.private_bytes_raw().hex() + "\n")
    return key


def read_identity_file(path: Path) -> Ed25519PrivateKey:
    """The identity key from a file holding its 32-byte seed as 64 hex digits."""
    try:
        text = path.read_text().strip()
        seed = bytes.fromhex(text)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"--identity-key {path}: not readable as a hex seed ({exc})") from None
    if len(seed) != 32:
        raise ValueError(f"--identity-key {path}: expected 64 hex digits (a 32-byte seed)")
    return Ed25519PrivateKey.from_private_bytes(seed)
