"""The signed directory: one view of the network per epoch, signed by a majority of the first ring.

Every relay of the first ring (the pinned [[relays]]) puts its own current descriptor and the
latest valid descriptor of each pinned peer into a directory for the current epoch, signs its
digest with its identity key (or the signing key its identity certifies) and sends the
signature to its peers. A directory that a majority of the ring signed is what relays hand
to clients; a client checks the majority against its own pins, so its home relay can pass
the directory on but not shape it (leave a relay out, change a key): any change alters the
digest and the signatures no longer match.

Wire form (sent to clients in chunks): body | count (2) | count x (signer (32) | signature (64)).
Body: version (1) | epoch (4) | count (2) | count x descriptor (each with its signing
certificate when it has one), sorted by identity.
"""

from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .descriptor import MAX_DESCRIPTOR_LEN, Descriptor, DescriptorError
from .reasons import CertificateFailure, Refusal
from .wire import ROLE_RELAY

PERIOD = 3600.0  # seconds per directory epoch
VERSION = 1
_CONTEXT = b"ringmesh-directory-v1"
_HEAD = struct.Struct("!BIH")
_COUNT = struct.Struct("!H")
_SIG_MSG = struct.Struct("!I32s64s")  # epoch, digest, signature (relay to relay)
SIG_ENTRY_LEN = 32 + 64
MAX_RELAYS = 1024
MAX_ENCODED = _HEAD.size + MAX_RELAYS * (MAX_DESCRIPTOR_LEN + SIG_ENTRY_LEN) + _COUNT.size
_KEPT_VIEWS = 8  # own past views whose signatures are still collected


class DirectoryError(ValueError):
    """A directory a client must refuse, and why."""

    def __init__(
        self, reason: Refusal, detail: str, certificate: CertificateFailure | None = None
    ) -> None:
        super().__init__(f"directory refused: {detail}")
        self.reason = reason
        self.certificate = certificate  # why a listed descriptor's certificate was refused


def epoch_at(now: float) -> int:
    return int(now // PERIOD)


def majority(ring_size: int) -> int:
    return ring_size // 2 + 1


@dataclass(frozen=True)
class Directory:
    epoch: int
    descriptors: tuple[Descriptor, ...]  # one per relay, sorted by identity

    @classmethod
    def build(cls, epoch: int, descriptors: list[Descriptor]) -> Directory:
        """Newest descriptor per identity, in canonical order."""
        newest: dict[bytes, Descriptor] = {}
        for desc in descriptors:
            held = newest.get(desc.identity)
            if held is None or desc.epoch > held.epoch:
                newest[desc.identity] = desc
        return cls(epoch, tuple(newest[i] for i in sorted(newest)))

    def body(self) -> bytes:
        head = _HEAD.pack(VERSION, self.epoch, len(self.descriptors))
        return head + b"".join(d.encode() for d in self.descriptors)

    @property
    def digest(self) -> bytes:
        return hashlib.sha256(_CONTEXT + self.body()).digest()

    @classmethod
    def decode_body(cls, raw: bytes) -> tuple[Directory, int]:
        """(directory, bytes used); checks every descriptor's signature chain."""
        if len(raw) < _HEAD.size:
            raise DirectoryError(Refusal.MALFORMED, "too short")
        version, epoch, count = _HEAD.unpack_from(raw)
        if version != VERSION or count > MAX_RELAYS:
            raise DirectoryError(Refusal.MALFORMED, "bad header")
        descriptors = []
        end = _HEAD.size
        for _ in range(count):
            try:
                desc, used = Descriptor.decode_prefix(raw[end : end + MAX_DESCRIPTOR_LEN])
            except DescriptorError as exc:
                raise DirectoryError(Refusal.BAD_DESCRIPTOR, str(exc), exc.certificate) from None
            descriptors.append(desc)
            end += used
        directory = cls(epoch, tuple(descriptors))
        identities = [d.identity for d in descriptors]
        if identities != sorted(set(identities)):
            raise DirectoryError(Refusal.MALFORMED, "descriptors not in canonical order")
        return directory, end


def sign(signing_key: Ed25519PrivateKey, directory: Directory) -> bytes:
    """A vote: by the identity key, or by the signing key the identity certified."""
    return signing_key.sign(_CONTEXT + directory.digest)


def signature_valid(signer: bytes, digest: bytes, signature: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(signer).verify(signature, _CONTEXT + digest)
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass(frozen=True)
class SignedDirectory:
    directory: Directory
    signatures: tuple[tuple[bytes, bytes], ...]  # (signer identity, signature)

    def encode(self) -> bytes:
        entries = b"".join(signer + sig for signer, sig in self.signatures)
        return self.directory.body() + _COUNT.pack(len(self.signatures)) + entries

    @classmethod
    def decode(cls, raw: bytes) -> SignedDirectory:
        directory, used = Directory.decode_body(raw)
        if len(raw) < used + _COUNT.size:
            raise DirectoryError(Refusal.MALFORMED, "no signatures")
        (count,) = _COUNT.unpack_from(raw, used)
        start = used + _COUNT.size
        if len(raw) != start + count * SIG_ENTRY_LEN:
            raise DirectoryError(Refusal.MALFORMED, "bad signature list")
        signatures = tuple(
            (raw[o : o + 32], raw[o + 32 : o + SIG_ENTRY_LEN])
            for o in range(start, len(raw), SIG_ENTRY_LEN)
        )
        return cls(directory, signatures)


def verify(raw: bytes, ring: frozenset[bytes], now: float) -> Directory:
    """The directory in raw if a majority of `ring` signed it for the current (or previous)
    epoch; only descriptors of pinned relays that are valid now are kept."""
    signed = SignedDirectory.decode(raw)
    directory = signed.directory
    if directory.epoch not in (epoch_at(now), epoch_at(now) - 1):
        raise DirectoryError(Refusal.STALE, f"epoch {directory.epoch} is not current")
    digest = directory.digest
    # A relay with an offline identity votes with its signing key, certified in its listed
    # descriptor; an expired certificate counts for nothing.
    voters = {d.identity: d.signing_public for d in directory.descriptors if _valid(d, now)}
    signers = {
        signer
        for signer, sig in signed.signatures
        if signer in ring and signature_valid(voters.get(signer, signer), digest, sig)
    }
    if len(signers) < majority(len(ring)):
        raise DirectoryError(
            Refusal.TOO_FEW_SIGNATURES,
            f"{len(signers)} of {len(ring)} pinned relays signed it, {majority(len(ring))} needed",
        )
    usable = [d for d in directory.descriptors if d.role == ROLE_RELAY and d.identity in ring]
    return Directory(directory.epoch, tuple(d for d in usable if _valid(d, now)))


def _valid(desc: Descriptor, now: float) -> bool:
    try:
        desc.check_valid(now)
    except DescriptorError:
        return False
    return True


def encode_signature(directory: Directory, signature: bytes) -> bytes:
    """Body of a relay's DIRECTORY_SIG message to its peers."""
    return _SIG_MSG.pack(directory.epoch, directory.digest, signature)


class Authority:
    """A first-ring relay's side: sign its own view, collect its peers' signatures, and keep
    the newest of its views that a majority signed, for clients."""

    def __init__(
        self,
        signing_key: Ed25519PrivateKey,
        ring: frozenset[bytes],
        identity: bytes | None = None,  # when signing_key is a certified signing key
    ) -> None:
        self.signing_key = signing_key
        self.identity = identity or signing_key.public_key().public_bytes_raw()
        self.ring = ring
        # Own views, newest last: digest -> (directory, signer -> signature).
        self._views: OrderedDict[bytes, tuple[Directory, dict[bytes, bytes]]] = OrderedDict()
        # Signatures that arrived before the matching own view: (digest, signer) -> signature.
        self._early: OrderedDict[tuple[bytes, bytes], bytes] = OrderedDict()
        self.signature_message = b""  # our signature on the current view, for peers

    def set_view(self, directory: Directory) -> bool:
        """Adopt directory as this relay's view; True when it changed (sign and announce)."""
        digest = directory.digest
        if self._views and next(reversed(self._views)) == digest:
            return False
        signature = sign(self.signing_key, directory)
        held = self._views.pop(digest, None)
        signatures = held[1] if held else {}
        signatures[self.identity] = signature
        for (early_digest, signer), sig in list(self._early.items()):
            if early_digest == digest:
                signatures[signer] = sig
                del self._early[(early_digest, signer)]
        self._views[digest] = (directory, signatures)
        while len(self._views) > _KEPT_VIEWS:
            self._views.popitem(last=False)
        self.signature_message = encode_signature(directory, signature)
        return True

    def add_signature(
        self, signer: bytes, body: bytes, now: float, signing_public: bytes | None = None
    ) -> bool:
        """A peer's DIRECTORY_SIG, made with its identity key or `signing_public` (the key its
        current certificate names); False when it is malformed, unpinned, stale or forged."""
        if signer not in self.ring or len(body) < _SIG_MSG.size:
            return False
        epoch, digest, signature = _SIG_MSG.unpack_from(body)
        if epoch not in (epoch_at(now), epoch_at(now) - 1):
            return False
        if not signature_valid(signing_public or signer, digest, signature):
            return False
        held = self._views.get(digest)
        if held is not None:
            held[1][signer] = signature
        else:
            self._early[(digest, signer)] = signature
            while len(self._early) > _KEPT_VIEWS * max(len(self.ring), 1):
                self._early.popitem(last=False)
        return True

    def best(self, now: float) -> SignedDirectory | None:
        """The newest own view of this or the previous epoch that a majority signed."""
        needed = majority(len(self.ring))
        for directory, signatures in reversed(self._views.values()):
            if directory.epoch not in (epoch_at(now), epoch_at(now) - 1):
                continue
            pinned = {s: sig for s, sig in signatures.items() if s in self.ring}
            if len(pinned) >= needed:
                return SignedDirectory(directory, tuple(sorted(pinned.items())))
        return None

    def status(self, now: float) -> dict[str, object]:
        best = self.best(now)
        current = next(reversed(self._views.values()), None)
        return {
            "epoch": epoch_at(now),
            "view_digest": current[0].digest.hex() if current else None,
            "view_signatures": len(current[1]) if current else 0,
            "served_digest": best.directory.digest.hex() if best else None,
            "served_relays": len(best.directory.descriptors) if best else 0,
            "majority": majority(len(self.ring)),
        }
