"""The optional offline identity key: certificates, the keystore's signing keys, handshakes
and directories that check identity -> certificate -> signing key, driven without sockets."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from test_link import Pair, session_of

from helpers import certified_credentials, credentials
from ringmesh import directory as d
from ringmesh.certificate import (
    CERTIFICATE_LEN,
    CertificateError,
    SigningCertificate,
    parse_lifetime,
)
from ringmesh.descriptor import DESCRIPTOR_LEN, Descriptor, DescriptorError
from ringmesh.did import did_from_public
from ringmesh.keystore import Keystore, KeystoreError, check_certificate
from ringmesh.reasons import CertificateFailure, HandshakeFailure
from ringmesh.wire import ROLE_CLIENT, ROLE_RELAY


def public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def forged(certificate: SigningCertificate, claimed: Ed25519PrivateKey) -> SigningCertificate:
    """The certificate re-labelled as `claimed`'s: signed by the wrong key for it."""
    return dataclasses.replace(certificate, identity=public(claimed))


def test_a_certified_descriptor_verifies_through_its_certificate() -> None:
    identity = Ed25519PrivateKey.generate()
    desc, _ = certified_credentials(ROLE_RELAY, identity)
    raw = desc.encode()
    assert len(raw) == DESCRIPTOR_LEN + CERTIFICATE_LEN
    back = Descriptor.decode(raw)
    assert back == desc and back.identity == public(identity)
    assert back.signing_public != public(identity)
    back.check_valid(time.time())
    # An identity-signed descriptor is unchanged: no certificate, the identity signs.
    online, _ = credentials(ROLE_RELAY)
    assert len(online.encode()) == DESCRIPTOR_LEN and online.signing_public == online.identity


def test_certificates_signed_by_the_wrong_key_or_expired_are_refused() -> None:
    identity, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    desc, _ = certified_credentials(ROLE_RELAY, other)
    assert desc.certificate is not None
    wrong = dataclasses.replace(desc, identity=public(identity))
    wrong = dataclasses.replace(wrong, certificate=forged(desc.certificate, identity))
    with pytest.raises(DescriptorError) as refused:
        Descriptor.decode(wrong.encode())
    assert refused.value.certificate is CertificateFailure.BAD_SIGNATURE
    # A valid certificate of another identity does not vouch for this descriptor.
    mismatched = dataclasses.replace(desc, identity=public(identity))
    with pytest.raises(DescriptorError) as refused:
        Descriptor.decode(mismatched.encode())
    assert refused.value.certificate is CertificateFailure.WRONG_IDENTITY
    # A certified descriptor without its certificate does not verify.
    with pytest.raises(DescriptorError):
        Descriptor.decode(desc.bare())
    expired, _ = certified_credentials(ROLE_RELAY, identity, lifetime=-1)
    Descriptor.decode(expired.encode())  # well signed ...
    with pytest.raises(DescriptorError) as refused:
        expired.check_valid(time.time())  # ... but over
    assert refused.value.certificate is CertificateFailure.EXPIRED
    with pytest.raises(CertificateError):
        SigningCertificate.decode(desc.certificate.encode()[:-1])


def test_lifetimes_parse_and_bad_ones_are_named() -> None:
    assert parse_lifetime("30d") == 30 * 86400
    assert parse_lifetime("12h") == 12 * 3600
    assert parse_lifetime("90") == 90
    for bad in ("", "0d", "-3d", "tomorrow", "3w"):
        with pytest.raises(ValueError, match="lifetime"):
            parse_lifetime(bad)


def test_a_handshake_checks_both_certificate_chains() -> None:
    p = Pair()
    a_identity, b_identity = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    p.a_creds = certified_credentials(ROLE_CLIENT, a_identity)
    p.b_creds = certified_credentials(ROLE_RELAY, b_identity)
    p.connect()
    sa, sb = session_of(p.a), session_of(p.b)
    # The responder's chain was completed by READY's certificate.
    assert sa.peer == p.b_creds[0] and sa.peer.certificate is not None
    assert sb.peer == p.a_creds[0] and sb.peer.certificate is not None
    assert p.a.counters["handshake_ok"] == 1 and p.b.counters["handshake_ok"] == 1


@pytest.mark.parametrize("side", ["responder", "initiator"])
@pytest.mark.parametrize("fault", ["wrong_key", "expired"])
def test_a_handshake_refuses_a_bad_certificate(side: str, fault: str) -> None:
    p = Pair()
    identity = Ed25519PrivateKey.generate()
    lifetime = -1 if fault == "expired" else 3600
    role = ROLE_RELAY if side == "responder" else ROLE_CLIENT
    desc, link = certified_credentials(role, identity, lifetime)
    if fault == "wrong_key":
        claimed = Ed25519PrivateKey.generate()
        assert desc.certificate is not None
        desc = Descriptor.sign(
            link,  # any key: the forged certificate names it
            certificate=forged(
                dataclasses.replace(desc.certificate, signing_public=public(link)), claimed
            ),
            role=desc.role,
            epoch=desc.epoch,
            valid_from=desc.valid_from,
            expires=desc.expires,
            link_public=desc.link_public,
            onion_public=desc.onion_public,
        )
    if side == "responder":
        p.b_creds, checker = (desc, link), p.a
    else:
        p.a_creds, checker = (desc, link), p.b
    p.a.connect(("127.0.0.1", 1002), None, p.now)
    p.pump()
    reason = (
        CertificateFailure.BAD_SIGNATURE if fault == "wrong_key" else CertificateFailure.EXPIRED
    )
    assert checker.counters[HandshakeFailure.BAD_CERTIFICATE.counter] >= 1
    assert checker.counters[reason.counter] >= 1
    assert p.a.counters["handshake_ok"] == 0
    assert not any(s.ready for s in p.a.sessions.values())


def offline_keystore(tmp_path: Path, identity: Ed25519PrivateKey) -> Keystore:
    store = Keystore(tmp_path, ROLE_RELAY, epoch_seconds=3600, grace_seconds=600)
    assert store.init(offline_identity=did_from_public(public(identity))) == "created"
    return store


def certify(store: Keystore, identity: Ed25519PrivateKey, expires: float) -> SigningCertificate:
    request = store.signing_request()
    assert request["did"] == did_from_public(public(identity))
    return SigningCertificate.issue(
        identity, bytes.fromhex(str(request["signing_key"])), int(expires)
    )


def test_an_offline_keystore_holds_no_identity_key_and_signs_with_its_certified_key(
    tmp_path: Path,
) -> None:
    identity = Ed25519PrivateKey.generate()
    store = offline_keystore(tmp_path, identity)
    assert not (store.dir / "identity.key").exists()
    with pytest.raises(KeystoreError, match=r"signing\.cert is missing"):
        store.load()
    # The request is idempotent until a certificate is installed; it is public only.
    assert store.signing_request() == store.signing_request()
    now = time.time()
    certificate = certify(store, identity, now + 30 * 86400)
    store.install_certificate(certificate.encode(), now)
    keys = store.load(now)
    assert keys.identity_key is None and keys.certificate == certificate
    assert keys.did == did_from_public(public(identity))
    with pytest.raises(KeystoreError, match="offline"):
        _ = keys.identity
    desc = Descriptor.decode(keys.current.descriptor.encode())
    assert desc.identity == public(identity)
    assert desc.signing_public == certificate.signing_public == public(keys.signing_key)
    assert check_certificate(keys, now) is None
    # Nothing secret of the identity anywhere in the keystore.
    seed = identity.private_bytes_raw()
    assert not any(seed in p.read_bytes() for p in store.dir.iterdir() if p.is_file())


def test_renewal_certifies_a_fresh_signing_key_and_destroys_the_old_one(tmp_path: Path) -> None:
    identity = Ed25519PrivateKey.generate()
    store = offline_keystore(tmp_path, identity)
    now = time.time()
    first = certify(store, identity, now + 86400)
    store.install_certificate(first.encode(), now)
    old_key = store.load(now).signing_key.private_bytes_raw()
    # Not due: a certificate with more than the threshold left asks for no new key.
    assert store.signing_request(renew_within=3600, now=now)["signing_key"] is None
    assert len(list(store.dir.glob("signing-*.key"))) == 1
    due = store.signing_request(renew_within=2 * 86400, now=now)
    assert due["certificate_expires_timestamp"] == first.expires and due["signing_key"]
    renewed = certify(store, identity, now + 30 * 86400)
    assert renewed.signing_public != first.signing_public
    store.install_certificate(renewed.encode(), now)
    keys = store.load(now)
    assert keys.certificate == renewed
    assert len(list(store.dir.glob("signing-*.key"))) == 1
    assert not any(old_key in p.read_bytes() for p in store.dir.iterdir() if p.is_file())
    # The old key is gone, so its certificate is useless; a shorter certificate for the
    # current key does not replace a longer-lasting one.
    with pytest.raises(KeystoreError, match="does not hold"):
        store.install_certificate(first.encode(), now)
    shorter = SigningCertificate.issue(identity, renewed.signing_public, int(now) + 3600)
    with pytest.raises(KeystoreError, match="lasts longer"):
        store.install_certificate(shorter.encode(), now)


def test_install_refuses_a_certificate_from_the_wrong_identity_or_expired(tmp_path: Path) -> None:
    identity, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    store = offline_keystore(tmp_path, identity)
    now = time.time()
    request = store.signing_request()
    signing_public = bytes.fromhex(str(request["signing_key"]))
    wrong = SigningCertificate.issue(other, signing_public, int(now + 86400))
    with pytest.raises(KeystoreError, match="not for this keystore's identity"):
        store.install_certificate(wrong.encode(), now)
    with pytest.raises(KeystoreError, match="not signed by the identity"):
        store.install_certificate(forged(wrong, identity).encode(), now)
    unknown = SigningCertificate.issue(identity, public(Ed25519PrivateKey.generate()), int(now) + 9)
    with pytest.raises(KeystoreError, match="does not hold"):
        store.install_certificate(unknown.encode(), now)
    stale = SigningCertificate.issue(identity, signing_public, int(now) - 1)
    with pytest.raises(KeystoreError, match="expired"):
        store.install_certificate(stale.encode(), now)
    # An online keystore takes no certificate and makes no signing request.
    online = Keystore(tmp_path / "online", ROLE_RELAY, 3600, 600)
    online.init()
    with pytest.raises(KeystoreError, match="online"):
        online.signing_request()


def test_the_node_warns_ahead_and_refuses_an_expired_certificate(tmp_path: Path) -> None:
    identity = Ed25519PrivateKey.generate()
    store = offline_keystore(tmp_path, identity)
    now = time.time()
    store.install_certificate(certify(store, identity, now + 3 * 86400).encode(), now)
    keys = store.load(now)
    assert keys.certificate is not None
    warning = check_certificate(keys, now)
    assert warning is not None and "renew" in warning
    with pytest.raises(KeystoreError, match="expired at 20"):
        check_certificate(keys, keys.certificate.expires)


def test_directory_votes_count_through_a_current_certificate_only() -> None:
    now = time.time()
    identities = [Ed25519PrivateKey.generate() for _ in range(3)]
    ring = frozenset(public(k) for k in identities)
    votes, descriptors = [], []
    signing_keys = [Ed25519PrivateKey.generate() for _ in identities]
    for identity, signing in zip(identities, signing_keys, strict=True):
        certificate = SigningCertificate.issue(identity, public(signing), int(now) + 600)
        descriptors.append(credentials(ROLE_RELAY, identity=signing, certificate=certificate)[0])
    view = d.Directory.build(d.epoch_at(now), descriptors)
    # Each relay votes with its signing key, whose certificate the directory lists.
    for identity, signing in zip(identities, signing_keys, strict=True):
        votes.append((public(identity), d.sign(signing, view)))
    raw = d.SignedDirectory(view, tuple(sorted(votes))).encode()
    assert len(d.verify(raw, ring, now).descriptors) == 3
    # A vote by the identity's key would need the identity online; one by an uncertified
    # key counts for nothing.
    stranger = Ed25519PrivateKey.generate()
    forged_votes = [(public(i), d.sign(stranger, view)) for i in identities]
    with pytest.raises(d.DirectoryError, match="0 of 3"):
        d.verify(d.SignedDirectory(view, tuple(sorted(forged_votes))).encode(), ring, now)
    # Once the certificates expired, neither the descriptors nor the votes count.
    with pytest.raises(d.DirectoryError) as refused:
        d.verify(raw, ring, now + 601)
    assert refused.value.reason.value == "too_few_signatures"
