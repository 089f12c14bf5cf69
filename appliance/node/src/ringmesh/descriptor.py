"""Descriptors: a node's per-epoch link and onion public keys, signed by its identity key, or
(version 2) by a signing key that the identity certifies (certificate.py), the certificate
following the signed descriptor on the wire."""

from __future__ import annotations

import dataclasses
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from .certificate import CERTIFICATE_LEN, CertificateError, SigningCertificate
from .did import did_from_public, node_id
from .reasons import CertificateFailure

_CONTEXT = b"ringmesh-descriptor-v1"
_BODY = struct.Struct("!BB32sIQQ32s32s")
VERSION = 1  # signed by the identity key
VERSION_CERTIFIED = 2  # signed by a certified signing key; the certificate follows
DESCRIPTOR_LEN = _BODY.size + 64  # without a certificate (what a handshake RESP carries)
MAX_DESCRIPTOR_LEN = DESCRIPTOR_LEN + CERTIFICATE_LEN


class DescriptorError(ValueError):
    """A descriptor is malformed, badly signed or expired; `certificate` says why when its
    signing certificate was the problem."""

    def __init__(self, detail: str, certificate: CertificateFailure | None = None) -> None:
        super().__init__(detail)
        self.certificate = certificate


@dataclass(frozen=True)
class Descriptor:
    role: int
    identity: bytes
    epoch: int
    valid_from: int
    expires: int
    link_public: bytes
    onion_public: bytes
    signature: bytes
    certificate: SigningCertificate | None = None

    @property
    def version(self) -> int:
        return VERSION if self.certificate is None else VERSION_CERTIFIED

    @property
    def signing_public(self) -> bytes:
        """The key that signs this relay's descriptors and directory votes."""
        return self.identity if self.certificate is None else self.certificate.signing_public

    @property
    def did(self) -> str:
        return did_from_public(self.identity)

    @property
    def node_id(self) -> bytes:
        return node_id(self.identity)

    def body(self) -> bytes:
        return _BODY.pack(
            self.version,
            self.role,
            self.identity,
            self.epoch,
            self.valid_from,
            self.expires,
            self.link_public,
            self.onion_public,
        )

    def bare(self) -> bytes:
        """The signed descriptor without its certificate (DESCRIPTOR_LEN bytes)."""
        return self.body() + self.signature

    def encode(self) -> bytes:
        certificate = b"" if self.certificate is None else self.certificate.encode()
        return self.bare() + certificate

    def onion_key(self) -> X25519PublicKey:
        return X25519PublicKey.from_public_bytes(self.onion_public)

    @classmethod
    def sign(
        cls,
        signing_key: Ed25519PrivateKey,
        *,
        certificate: SigningCertificate | None = None,
        role: int,
        epoch: int,
        valid_from: int,
        expires: int,
        link_public: bytes,
        onion_public: bytes,
    ) -> Descriptor:
        """Signed by the identity key itself, or by the signing key `certificate` names."""
        signer = signing_key.public_key().public_bytes_raw()
        if certificate is not None and certificate.signing_public != signer:
            raise ValueError("the certificate names another signing key")
        identity = signer if certificate is None else certificate.identity
        fields = (role, identity, epoch, valid_from, expires, link_public, onion_public)
        unsigned = cls(*fields, b"", certificate)
        return cls(*fields, signing_key.sign(_CONTEXT + unsigned.body()), certificate)

    @classmethod
    def decode(cls, data: bytes) -> Descriptor:
        """Parse and check the signature chain (not the validity window)."""
        desc, used = cls.decode_prefix(data)
        if used != len(data):
            raise DescriptorError("descriptor has the wrong length")
        return desc

    @classmethod
    def decode_prefix(cls, data: bytes) -> tuple[Descriptor, int]:
        """The descriptor (and certificate) at the start of data, and the bytes it used."""
        certified = data[:1] == bytes([VERSION_CERTIFIED])
        used = MAX_DESCRIPTOR_LEN if certified else DESCRIPTOR_LEN
        if len(data) < used:
            raise DescriptorError("descriptor has the wrong length")
        certificate = None
        if certified:
            try:
                certificate = SigningCertificate.decode(data[DESCRIPTOR_LEN:used])
            except CertificateError as exc:
                raise DescriptorError(str(exc), exc.reason) from None
        return cls.verify_bare(data[:DESCRIPTOR_LEN], certificate), used

    @classmethod
    def parse_unverified(cls, bare: bytes) -> Descriptor:
        """The fields of a bare descriptor, its signature NOT checked (a handshake checks it
        once the certificate arrives, see handshake.confirm_responder)."""
        if len(bare) != DESCRIPTOR_LEN:
            raise DescriptorError("descriptor has the wrong length")
        version, role, identity, epoch, valid_from, expires, link_pub, onion_pub = _BODY.unpack(
            bare[: _BODY.size]
        )
        if version not in (VERSION, VERSION_CERTIFIED):
            raise DescriptorError("unknown descriptor version")
        fields = (role, identity, epoch, valid_from, expires, link_pub, onion_pub)
        return cls(*fields, bare[_BODY.size :])

    @classmethod
    def verify_bare(cls, bare: bytes, certificate: SigningCertificate | None) -> Descriptor:
        """A bare descriptor whose signature verifies under its identity (version 1) or under
        the signing key of `certificate`, which must certify its identity (version 2)."""
        desc = cls.parse_unverified(bare)
        certified = bare[0] == VERSION_CERTIFIED
        if certified != (certificate is not None):
            raise DescriptorError("certificate missing or unexpected", CertificateFailure.MALFORMED)
        if certificate is not None and certificate.identity != desc.identity:
            raise DescriptorError(
                "certificate is for another identity", CertificateFailure.WRONG_IDENTITY
            )
        signer = desc.identity if certificate is None else certificate.signing_public
        try:
            Ed25519PublicKey.from_public_bytes(signer).verify(
                desc.signature, _CONTEXT + bare[: _BODY.size]
            )
        except (InvalidSignature, ValueError):
            raise DescriptorError("descriptor signature does not verify") from None
        return dataclasses.replace(desc, certificate=certificate)

    def check_valid(self, now: float) -> None:
        if not self.valid_from - 300 <= now < self.expires:
            raise DescriptorError("descriptor is outside its validity window")
        if self.certificate is not None:
            try:
                self.certificate.check_valid(now)
            except CertificateError as exc:
                raise DescriptorError(str(exc), exc.reason) from None
