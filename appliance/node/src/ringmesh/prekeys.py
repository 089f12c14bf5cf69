"""End-to-end prekeys: medium-term hybrid (ML-KEM-768 + X25519) keys that a user's identity
key certifies and that senders seal to with HPKE (RFC 9180; pyca/cryptography's
MLKEM768X25519 KEM, HKDF-SHA256, ChaCha20-Poly1305).

A user keeps one current prekey, replaced every `lifetime` seconds; a replaced prekey still
opens what was sealed to it for `grace` seconds, then its file is overwritten and unlinked.
After that, nothing the user holds (identity key, current prekeys) opens a message sealed to
it: compromising a user later opens no earlier message, and the ML-KEM half keeps that so
against a future quantum adversary who recorded the traffic.

Pure except for PrekeyStore, which keeps the private halves in
`<state_dir>/keys/prekey-NNNNNNNN.key` (0600), written once and destroyed as the keystore
destroys epoch keys.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey, MLKEM768PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from .keystore import KeystoreError, _create_private, _destroy, locked_dir

SUITE = hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)
VERSION = 1
_CONTEXT = b"ringmesh-prekey-v1"
# version, owner identity, prekey id, valid from, expires, ML-KEM-768 public, X25519 public
_BODY = struct.Struct("!B32sIQQ1184s32s")
SIGNATURE_LEN = 64
BUNDLE_LEN = _BODY.size + SIGNATURE_LEN
_ID = struct.Struct("!I")
# what a sealed message adds: prekey id, HPKE encapsulation (1088 + 32), AEAD tag
SEAL_OVERHEAD = _ID.size + 1120 + 16
# a prekey file: ML-KEM seed, X25519 private key, valid from, expires
_SECRET = struct.Struct("!64s32sQQ")


class PrekeyError(ValueError):
    """A prekey bundle that does not verify, or a sealed message no held prekey opens."""


@dataclass(frozen=True)
class PrekeyBundle:
    """The public half of a prekey, certified by its owner's Ed25519 identity key."""

    identity: bytes
    prekey_id: int
    valid_from: int
    expires: int
    mlkem_public: bytes
    x25519_public: bytes
    signature: bytes = b""

    def body(self) -> bytes:
        return _BODY.pack(
            VERSION,
            self.identity,
            self.prekey_id,
            self.valid_from,
            self.expires,
            self.mlkem_public,
            self.x25519_public,
        )

    def encode(self) -> bytes:
        return self.body() + self.signature

    @classmethod
    def decode(cls, raw: bytes, identity: bytes, now: float) -> PrekeyBundle:
        """Parse and check: signed by `identity` (the user the sender means) and valid now."""
        if len(raw) != BUNDLE_LEN:
            raise PrekeyError(f"a prekey bundle is {BUNDLE_LEN} bytes")
        version, owner, prekey_id, valid_from, expires, mlkem, x25519 = _BODY.unpack_from(raw)
        if version != VERSION:
            raise PrekeyError(f"unknown prekey bundle version {version}")
        if owner != identity:
            raise PrekeyError("the bundle belongs to another identity")
        signature = raw[_BODY.size :]
        try:
            Ed25519PublicKey.from_public_bytes(owner).verify(
                signature, _CONTEXT + raw[: _BODY.size]
            )
        except (InvalidSignature, ValueError):
            raise PrekeyError("the bundle's signature does not verify") from None
        if not valid_from <= now < expires:
            raise PrekeyError("the prekey is not valid now")
        return cls(owner, prekey_id, valid_from, expires, mlkem, x25519, signature)

    def envelope_key(self) -> X25519PublicKey:
        """Its X25519 half: the key a sender seals every fragment envelope to."""
        try:
            return X25519PublicKey.from_public_bytes(self.x25519_public)
        except ValueError:
            raise PrekeyError("the bundle holds an invalid public key") from None

    def public_key(self) -> hpke.MLKEM768X25519PublicKey:
        try:
            return hpke.MLKEM768X25519PublicKey(
                MLKEM768PublicKey.from_public_bytes(self.mlkem_public), self.envelope_key()
            )
        except ValueError:
            raise PrekeyError("the bundle holds an invalid public key") from None


@dataclass(frozen=True)
class Prekey:
    """A prekey's private half, with the window it is current in."""

    prekey_id: int
    mlkem_seed: bytes
    x25519_private: bytes
    valid_from: int
    expires: int

    @classmethod
    def generate(cls, prekey_id: int, valid_from: int, expires: int) -> Prekey:
        mlkem = MLKEM768PrivateKey.generate()
        x25519 = X25519PrivateKey.generate()
        return cls(
            prekey_id, mlkem.private_bytes_raw(), x25519.private_bytes_raw(), valid_from, expires
        )

    def private_key(self) -> hpke.MLKEM768X25519PrivateKey:
        return hpke.MLKEM768X25519PrivateKey(
            MLKEM768PrivateKey.from_seed_bytes(self.mlkem_seed), self.envelope_key()
        )

    def envelope_key(self) -> X25519PrivateKey:
        """Its X25519 half, which also opens the fragment envelopes around a sealed body: a
        sender with the bundle seals every fragment (ids, reply blocks) to it, so nothing of
        the message opens once the prekey is destroyed."""
        return X25519PrivateKey.from_private_bytes(self.x25519_private)

    def certify(self, identity: Ed25519PrivateKey) -> PrekeyBundle:
        mlkem = MLKEM768PrivateKey.from_seed_bytes(self.mlkem_seed).public_key()
        x25519 = self.envelope_key().public_key()
        unsigned = PrekeyBundle(
            identity.public_key().public_bytes_raw(),
            self.prekey_id,
            self.valid_from,
            self.expires,
            mlkem.public_bytes_raw(),
            x25519.public_bytes_raw(),
        )
        signature = identity.sign(_CONTEXT + unsigned.body())
        return replace(unsigned, signature=signature)

    def encode(self) -> bytes:
        return _SECRET.pack(self.mlkem_seed, self.x25519_private, self.valid_from, self.expires)

    @classmethod
    def decode(cls, prekey_id: int, raw: bytes) -> Prekey:
        if len(raw) != _SECRET.size:
            raise PrekeyError(f"a prekey file is {_SECRET.size} bytes")
        seed, x25519, valid_from, expires = _SECRET.unpack(raw)
        return cls(prekey_id, seed, x25519, valid_from, expires)


def _info(identity: bytes, prekey_id: int) -> bytes:
    return _CONTEXT + identity + _ID.pack(prekey_id)


def seal(bundle: PrekeyBundle, plaintext: bytes) -> bytes:
    """prekey id | HPKE ciphertext (encapsulation, then the sealed plaintext)."""
    info = _info(bundle.identity, bundle.prekey_id)
    return _ID.pack(bundle.prekey_id) + SUITE.encrypt(plaintext, bundle.public_key(), info=info)


def sealed_to(sealed: bytes) -> int:
    """The id of the prekey a message is sealed to."""
    if len(sealed) < SEAL_OVERHEAD:
        raise PrekeyError("too short for a sealed message")
    prekey_id: int = _ID.unpack_from(sealed)[0]
    return prekey_id


def open_sealed(prekey: Prekey, identity: bytes, sealed: bytes) -> bytes:
    if sealed_to(sealed) != prekey.prekey_id:
        raise PrekeyError("not sealed to this prekey")
    try:
        return SUITE.decrypt(
            sealed[_ID.size :], prekey.private_key(), info=_info(identity, prekey.prekey_id)
        )
    except Exception:  # pyca raises InvalidTag or ValueError for a bad ciphertext
        raise PrekeyError("the message does not open with this prekey") from None


class PrekeyStore:
    """A user's prekeys on disk: one current, the replaced ones until their grace ends."""

    def __init__(
        self, keys_dir: Path, identity: Ed25519PrivateKey, lifetime: int, grace: int
    ) -> None:
        self.dir = keys_dir
        self.identity = identity
        self.identity_public = identity.public_key().public_bytes_raw()
        self.lifetime = lifetime
        self.grace = grace

    def _path(self, prekey_id: int) -> Path:
        return self.dir / f"prekey-{prekey_id:08d}.key"

    def held(self) -> list[Prekey]:
        """Every prekey on disk, newest first."""
        out = []
        for path in self.dir.glob("prekey-*.key"):
            try:
                prekey_id = int(path.stem.removeprefix("prekey-"))
                out.append(Prekey.decode(prekey_id, path.read_bytes()))
            except (ValueError, PrekeyError) as exc:
                raise KeystoreError(f"{path}: unreadable prekey file ({exc})") from None
        return sorted(out, key=lambda p: p.prekey_id, reverse=True)

    def maintain(self, now: float) -> PrekeyBundle:
        """Make a new prekey when the current one ended (or none exists), destroy those whose
        grace is over; returns the current prekey's certified bundle. Safe to call from
        several processes at once (a `recv` and a `send` of one user)."""
        with locked_dir(self.dir):
            return self._maintain_locked(now)

    def _maintain_locked(self, now: float) -> PrekeyBundle:
        held = self.held()
        for prekey in held:
            if prekey.expires + self.grace <= now:
                _destroy(self._path(prekey.prekey_id))
        current = held[0] if held else None
        if current is None or current.expires <= now:
            start = int(now)
            prekey_id = current.prekey_id + 1 if current else 1
            current = Prekey.generate(prekey_id, start, start + self.lifetime)
            _create_private(self._path(prekey_id), current.encode())
        return current.certify(self.identity)

    def open(self, sealed: bytes) -> bytes:
        """Open a message sealed to any prekey still held; PrekeyError when none opens it."""
        prekey_id = sealed_to(sealed)
        for prekey in self.held():
            if prekey.prekey_id == prekey_id:
                return open_sealed(prekey, self.identity_public, sealed)
        raise PrekeyError(f"prekey {prekey_id} is not held (destroyed, or never ours)")
