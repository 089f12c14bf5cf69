"""On-disk keystore: identity key and per-epoch link/onion keys, strict permissions.

<state_dir>/keys/            0700, owned by the running user
    identity.key             0600, 32-byte Ed25519 seed (online identity, the default)
    identity.did             0600, the did:key alone, when the identity key is kept offline
    signing-<8 hex>.key      0600, offline identity: a signing key's 32-byte Ed25519 seed
    signing.cert             0600, offline identity: the identity's certificate for one of them
    epoch-00000001.json      0600, one epoch's link and onion private keys
    epoch-00000001.retired   0600, when that epoch was rotated out (no secret)
    epoch-00000001.replay    0600, that epoch's onion replay filter (keyed hashes, no secret)
    .lock                    0600, serialises rotate / prune between CLI and daemon

A file holding a private key is written once and never replaced: renaming a new version over
it would free the old inode's blocks with the key still in them. It is created under a
temporary name and hard-linked to its final name (which fails rather than replaces), and it
is destroyed by overwriting it in place, syncing, then unlinking.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from .certificate import RENEW_WITHIN, CertificateError, SigningCertificate
from .descriptor import Descriptor
from .did import DidError, did_from_public, fingerprint, public_from_did
from .replay import OnionReplayFilter, ReplayFilterError, epoch_filter_key


class KeystoreError(Exception):
    """The keystore is missing, unreadable or has unsafe permissions."""


@dataclass
class EpochKeys:
    epoch: int
    created: int
    expires: int
    retired_at: int | None
    link_key: Ed25519PrivateKey
    onion_key: X25519PrivateKey
    descriptor: Descriptor


@dataclass
class Keys:
    identity_key: Ed25519PrivateKey | None  # None when the identity is kept offline
    epochs: list[EpochKeys]  # newest first; epochs[0] is current
    identity_public: bytes
    signing_key: Ed25519PrivateKey  # signs descriptors and directory votes
    certificate: SigningCertificate | None  # the identity's, for signing_key, when offline

    @property
    def identity(self) -> Ed25519PrivateKey:
        if self.identity_key is None:
            raise KeystoreError("this keystore's identity key is kept offline")
        return self.identity_key

    @property
    def did(self) -> str:
        return did_from_public(self.identity_public)

    @property
    def current(self) -> EpochKeys:
        return self.epochs[0]


def check_certificate(keys: Keys, now: float) -> str | None:
    """Refuse to run on an expired signing certificate; a warning when it expires soon."""
    certificate = keys.certificate
    if certificate is None:
        return None
    if now >= certificate.expires:
        raise KeystoreError(
            f"the signing certificate expired at {iso(certificate.expires)}; certify a new "
            "signing key with the offline identity key (ringmesh keys signing-request, "
            "keys certify, keys install-cert)"
        )
    if certificate.expires - now < RENEW_WITHIN:
        return f"the signing certificate expires at {iso(certificate.expires)}; renew it"
    return None


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create_private(path: Path, data: bytes) -> None:
    """Write a new private file; refuses to replace an existing one."""
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():  # left by a crash mid-write: it may hold key bytes
        _destroy(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # unlike rename, never replaces (and frees) an existing file
    except FileExistsError:
        _destroy(tmp)
        raise KeystoreError(f"{path} already exists; refusing to replace a key file") from None
    tmp.unlink()  # the inode lives on under `path`: nothing is freed
    _fsync_dir(path.parent)


def _write_atomic(path: Path, *chunks: bytes | memoryview) -> None:
    """Replace a file that holds no secret (tmp + rename): readers see old or new, never half."""
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        for chunk in chunks:
            f.write(chunk)
        f.flush()
        os.fsync(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


@contextlib.contextmanager
def locked_dir(directory: Path) -> Iterator[None]:
    """Exclusive use of a key directory among processes (a daemon, `send`, `recv`, timers)."""
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _destroy(path: Path) -> None:
    """Overwrite in place, sync, then unlink.

    In place means the same blocks on file systems that update in place (ext4 and XFS in their
    default modes); copy-on-write file systems (btrfs, ZFS) and SSD wear levelling may keep old
    copies that no file-level erasure reaches.
    """
    try:
        fd = os.open(path, os.O_WRONLY)
    except FileNotFoundError:
        return
    try:
        size = os.fstat(fd).st_size
        written = 0
        while written < size:
            written += os.write(fd, bytes(min(size - written, 1 << 20)))
        os.fsync(fd)
    finally:
        os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    _fsync_dir(path.parent)


class Keystore:
    def __init__(self, state_dir: Path, role: int, epoch_seconds: int, grace_seconds: int):
        self.state_dir = Path(state_dir)
        self.dir = self.state_dir / "keys"
        self.role = role
        self.epoch_seconds = epoch_seconds
        self.grace_seconds = grace_seconds

    # --- permissions -------------------------------------------------------------------------

    def _check_mode(self, path: Path, want: int) -> None:
        try:
            st = path.lstat()
        except FileNotFoundError:
            raise KeystoreError(f"{path} is missing (run 'ringmesh keys init')") from None
        if stat.S_ISLNK(st.st_mode):
            raise KeystoreError(f"{path} is a symlink; refusing to use it")
        if st.st_uid != os.geteuid():
            raise KeystoreError(f"{path} is owned by uid {st.st_uid}, not by uid {os.geteuid()}")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise KeystoreError(
                f"{path} has mode {mode:04o}, expected {want:04o} (no group/other access)"
            )

    def check_permissions(self) -> None:
        self._check_mode(self.dir, 0o700)
        for path in self.dir.iterdir():
            self._check_mode(path, 0o600)

    def locked(self) -> contextlib.AbstractContextManager[None]:
        return locked_dir(self.dir)

    # --- commands ----------------------------------------------------------------------------

    def init(self, now: float | None = None, offline_identity: str | None = None) -> str:
        """Create what is missing; with offline_identity (a did:key) the identity key is not
        made here: it stays with the operator, who certifies this relay's signing key."""
        now = time.time() if now is None else now
        if offline_identity is not None:
            try:
                public_from_did(offline_identity)
            except DidError as exc:
                raise KeystoreError(f"--offline-identity: {exc}") from None
        self.state_dir.mkdir(parents=True, exist_ok=True)
        created = False
        if not self.dir.exists():
            self.dir.mkdir(mode=0o700)
            os.chmod(self.dir, 0o700)
            created = True
        self.check_permissions()
        with self.locked():
            held = self._offline_did()
            if offline_identity is not None and (self._identity_path.exists() or held):
                if held != offline_identity:
                    raise KeystoreError(
                        f"{self.dir} already holds another identity; refusing to replace it"
                    )
            elif offline_identity is not None:
                _write_atomic(self._did_path, offline_identity.encode())
                created = True
            elif not self._identity_path.exists() and held is None:
                _create_private(self._identity_path, os.urandom(32))
                created = True
            if not self._epoch_files():
                self._new_epoch(1, int(now))
                created = True
        return "created" if created else "exists"

    def load(self, now: float | None = None) -> Keys:
        now = time.time() if now is None else now
        self.check_permissions()
        identity: Ed25519PrivateKey | None = None
        certificate = None
        did = self._offline_did()
        if did is None:
            identity = _read_seed(self._identity_path)
            signer = identity
            identity_public = identity.public_key().public_bytes_raw()
        else:
            identity_public = public_from_did(did)
            certificate = self._installed_certificate(identity_public)
            signer = _read_seed(self._signing_path(certificate.signing_public))
        epochs = []
        for path in self._epoch_files():
            try:
                record = json.loads(path.read_text())
                epochs.append(self._epoch_from_record(signer, certificate, record))
            except (ValueError, KeyError, TypeError) as exc:
                raise KeystoreError(f"{path}: unreadable epoch file ({exc})") from None
        if not epochs:
            raise KeystoreError(f"{self.dir} holds no epoch keys (run 'ringmesh keys init')")
        epochs.sort(key=lambda e: e.epoch, reverse=True)
        return Keys(identity, epochs, identity_public, signer, certificate)

    # --- offline identity: signing keys and their certificate --------------------------------

    def signing_request(
        self, renew_within: float | None = None, now: float | None = None
    ) -> dict[str, object]:
        """The did and a signing key awaiting a certificate: the one already waiting, else a
        new one (each renewal certifies a fresh key, so a stolen one dies with its
        certificate). With renew_within, no key while the installed certificate has longer
        than that left (signing_key is then null). Public values only."""
        now = time.time() if now is None else now
        with self.locked():
            did = self._offline_did()
            if did is None:
                raise KeystoreError(
                    f"{self.dir} keeps its identity key online; signing requests are for "
                    "a keystore made with 'keys init --offline-identity DID'"
                )
            current = self._current_certificate()
            request: dict[str, object] = {
                "did": did,
                "certificate_expires_timestamp": current.expires if current else None,
                "signing_key": None,
            }
            if current and renew_within is not None and current.expires - now > renew_within:
                return request
            current_path = current and self._signing_path(current.signing_public)
            waiting = [p for p in self._signing_files() if p != current_path]
            if waiting:
                public = _read_seed(waiting[0]).public_key().public_bytes_raw()
            else:
                key = Ed25519PrivateKey.generate()
                public = key.public_key().public_bytes_raw()
                _create_private(self._signing_path(public), key.private_bytes_raw())
            request["signing_key"] = public.hex()
        return request

    def install_certificate(self, raw: bytes, now: float | None = None) -> SigningCertificate:
        """Check a certificate against this keystore, install it, destroy other signing keys."""
        now = time.time() if now is None else now
        try:
            certificate = SigningCertificate.decode(raw)
            certificate.check_valid(now)
        except CertificateError as exc:
            raise KeystoreError(str(exc)) from None
        with self.locked():
            did = self._offline_did()
            if did is None or public_from_did(did) != certificate.identity:
                raise KeystoreError(
                    f"the certificate is for {did_from_public(certificate.identity)}, "
                    f"not for this keystore's identity ({did or 'kept online'})"
                )
            if not self._signing_path(certificate.signing_public).exists():
                raise KeystoreError(
                    "the certificate names a signing key this keystore does not hold"
                )
            current = self._current_certificate()
            if current is not None and current.expires > certificate.expires:
                raise KeystoreError(
                    f"the installed certificate lasts longer (until {iso(current.expires)})"
                )
            _write_atomic(self._cert_path, raw)
            for path in self._signing_files():
                if path != self._signing_path(certificate.signing_public):
                    _destroy(path)
        return certificate

    @property
    def _identity_path(self) -> Path:
        return self.dir / "identity.key"

    @property
    def _did_path(self) -> Path:
        return self.dir / "identity.did"

    @property
    def _cert_path(self) -> Path:
        return self.dir / "signing.cert"

    def _signing_path(self, public: bytes) -> Path:
        return self.dir / f"signing-{public[:4].hex()}.key"

    def _signing_files(self) -> list[Path]:
        return sorted(self.dir.glob("signing-*.key"))

    def _offline_did(self) -> str | None:
        try:
            return self._did_path.read_text().strip()
        except FileNotFoundError:
            return None

    def _current_certificate(self) -> SigningCertificate | None:
        try:
            return SigningCertificate.decode(self._cert_path.read_bytes())
        except FileNotFoundError:
            return None
        except CertificateError as exc:
            raise KeystoreError(f"{self._cert_path}: {exc}") from None

    def _installed_certificate(self, identity_public: bytes) -> SigningCertificate:
        certificate = self._current_certificate()
        if certificate is None:
            raise KeystoreError(
                f"{self._cert_path} is missing: the identity is kept offline and no signing "
                "certificate is installed (ringmesh keys signing-request, keys certify, "
                "keys install-cert)"
            )
        if certificate.identity != identity_public:
            raise KeystoreError(f"{self._cert_path} certifies another identity")
        return certificate

    def rotate(self, now: float | None = None) -> Keys:
        now = time.time() if now is None else now
        with self.locked():
            keys = self.load(now)
            current = keys.current
            _write_atomic(self._retired_path(current.epoch), str(int(now)).encode())
            self._new_epoch(current.epoch + 1, int(now))
            self._prune_locked(now)
        return self.load(now)

    def prune(self, now: float | None = None) -> list[int]:
        now = time.time() if now is None else now
        with self.locked():
            return self._prune_locked(now)

    # --- onion replay filters, persisted with their epoch -----------------------------------

    def open_replay_filter(
        self, ep: EpochKeys, budget: int, false_positive_rate: float
    ) -> OnionReplayFilter:
        """The epoch's filter as last saved, or a new one sized for `budget` packets."""
        path = self._replay_path(ep.epoch)
        key = epoch_filter_key(ep.onion_key)
        try:
            with path.open("rb") as f:
                return OnionReplayFilter.read_from(f, key)
        except FileNotFoundError:
            return OnionReplayFilter(key, budget, false_positive_rate)
        except ReplayFilterError as exc:
            raise KeystoreError(
                f"{path}: unusable replay filter ({exc}); deleting it starts the epoch with an "
                "empty filter, so packets it recorded could be replayed"
            ) from None

    def save_replay_filter(self, epoch: int, replay: OnionReplayFilter) -> bool:
        """Write the filter atomically beside its epoch's keys; False once the epoch is gone
        (a filter never outlives its key)."""
        with self.locked():
            if not self._epoch_path(epoch).exists():
                return False
            _write_atomic(self._replay_path(epoch), replay.header(), replay.bits)
            replay.dirty = False
            return True

    # --- internals ---------------------------------------------------------------------------

    def _epoch_files(self) -> list[Path]:
        return sorted(self.dir.glob("epoch-*.json"))

    def _prune_locked(self, now: float) -> list[int]:
        keys = self.load(now)
        destroyed = []
        for ep in keys.epochs[1:]:
            retired = ep.retired_at if ep.retired_at is not None else ep.expires
            if now >= retired + self.grace_seconds:
                self._destroy_epoch(ep.epoch)
                destroyed.append(ep.epoch)
        self._destroy_leftovers()
        return destroyed

    def _destroy_epoch(self, epoch: int) -> None:
        _destroy(self._epoch_path(epoch))
        for path in self._epoch_companions(epoch):
            _destroy(path)

    def _epoch_companions(self, epoch: int) -> list[Path]:
        """Files that live and die with an epoch's key file."""
        return [self._retired_path(epoch), self._replay_path(epoch)]

    def _destroy_leftovers(self) -> None:
        """Temporary files of an interrupted write, companions of epochs already destroyed."""
        for tmp in self.dir.glob("*.tmp"):
            _destroy(tmp)
        live = {path.name.split(".")[0] for path in self._epoch_files()}
        for path in self.dir.glob("epoch-*.*"):
            if path.name.split(".")[0] not in live:
                _destroy(path)

    def _epoch_path(self, epoch: int) -> Path:
        return self.dir / f"epoch-{epoch:08d}.json"

    def _retired_path(self, epoch: int) -> Path:
        return self.dir / f"epoch-{epoch:08d}.retired"

    def _replay_path(self, epoch: int) -> Path:
        return self.dir / f"epoch-{epoch:08d}.replay"

    def _new_epoch(self, epoch: int, now: int) -> None:
        record = {
            "epoch": epoch,
            "created": now,
            "expires": now + self.epoch_seconds,
            "link_seed": os.urandom(32).hex(),
            "onion_key": X25519PrivateKey.generate().private_bytes_raw().hex(),
        }
        _create_private(self._epoch_path(epoch), json.dumps(record).encode())

    def _epoch_from_record(
        self,
        signer: Ed25519PrivateKey,
        certificate: SigningCertificate | None,
        record: dict[str, object],
    ) -> EpochKeys:
        epoch = _bounded(record["epoch"], "epoch", 1, _MAX_EPOCH)
        created = _bounded(record["created"], "created", 0, _MAX_TIME)
        expires = _bounded(record["expires"], "expires", 0, _MAX_TIME - self.grace_seconds)
        retired = record.get("retired_at")  # where earlier keystores kept it
        marker = self._retired_path(epoch)
        if marker.exists():
            retired = marker.read_text().strip()
        retired_at = None if retired is None else _bounded(retired, "retired_at", 0, _MAX_TIME)
        link_key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(str(record["link_seed"])))
        onion_key = X25519PrivateKey.from_private_bytes(bytes.fromhex(str(record["onion_key"])))
        descriptor = Descriptor.sign(
            signer,
            certificate=certificate,
            role=self.role,
            epoch=epoch,
            valid_from=created,
            expires=expires + self.grace_seconds,
            link_public=link_key.public_key().public_bytes_raw(),
            onion_public=onion_key.public_key().public_bytes_raw(),
        )
        return EpochKeys(epoch, created, expires, retired_at, link_key, onion_key, descriptor)


# What a descriptor can carry (epoch u32, times u64; times kept below 2^62 for headroom).
_MAX_EPOCH = (1 << 32) - 1
_MAX_TIME = 1 << 62


def _read_seed(path: Path) -> Ed25519PrivateKey:
    try:
        seed = path.read_bytes()
    except FileNotFoundError:
        raise KeystoreError(f"{path} is missing (run 'ringmesh keys init')") from None
    if len(seed) != 32:
        raise KeystoreError(f"{path}: expected a 32-byte seed")
    return Ed25519PrivateKey.from_private_bytes(seed)


def _bounded(value: object, name: str, low: int, high: int) -> int:
    number = int(str(value))
    if not low <= number <= high:
        raise ValueError(f"{name} {number} is outside {low}..{high}")
    return number


def public_summary(keys: Keys) -> dict[str, object]:
    cur = keys.current
    return {
        "did": keys.did,
        "epoch": cur.epoch,
        "epoch_expires": iso(cur.expires),
        "link_key_fingerprint": fingerprint(cur.descriptor.link_public),
        "onion_key_fingerprint": fingerprint(cur.descriptor.onion_public),
        **certificate_summary(keys),
    }


def certificate_summary(keys: Keys) -> dict[str, object]:
    """Public facts about an offline identity's signing certificate (empty when online)."""
    certificate = keys.certificate
    if certificate is None:
        return {}
    return {
        "identity_offline": True,
        "signing_key_fingerprint": fingerprint(certificate.signing_public),
        "certificate_expires": iso(certificate.expires),
        "certificate_expires_timestamp": certificate.expires,
    }
