"""The ledger node's decisions, without I/O: what to commit to etcd, and how to apply the
transactions that etcd ordered.

Every node applies every transaction only after verifying it against its own UTXO set, in
etcd's revision order, so all honest nodes reach the same set whatever a faulty node wrote.
The height is the etcd revision of the last ledger transaction processed; at every height
the node signs the digest of its set.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from dataclasses import dataclass

from . import codec, verify
from .keys import SigningKey, verify_signature
from .model import Output
from .store import Change, UtxoStore
from .verify import Checked, Reject, Rejected

TX_PREFIX = b"/tx/"
SPENT_PREFIX = b"/spent/"


@dataclass(frozen=True)
class SignedDigest:
    height: int
    digest: bytes
    root: bytes
    issued: int
    fees: int
    did: str
    signature: bytes

    def to_json(self) -> dict[str, object]:
        return {
            "height": self.height,
            "digest": self.digest.hex(),
            "root": self.root.hex(),
            "issued": self.issued,
            "fees": self.fees,
            "did": self.did,
            "signature": self.signature.hex(),
        }


def digest_message(height: int, digest: bytes) -> bytes:
    return b"ringmesh-ledger-digest-v1" + height.to_bytes(8, "little") + digest


def check_signed_digest(public: bytes, height: int, digest: bytes, signature: bytes) -> bool:
    return verify_signature(public, signature, digest_message(height, digest))


class _Overlay:
    """The store as it will be after the transactions checked so far in a batch."""

    def __init__(self, store: UtxoStore) -> None:
        self._store = store
        self._added: dict[bytes, Output] = {}
        self._removed: set[bytes] = set()

    def get(self, utxo_id: bytes) -> Output | None:
        if utxo_id in self._removed:
            return None
        return self._added.get(utxo_id) or self._store.get(utxo_id)

    def apply(self, checked: Checked) -> None:
        self._removed.update(checked.spent)
        self._added.update(checked.created)


class LedgerCore:
    def __init__(
        self,
        store: UtxoStore,
        key: SigningKey,
        issuer: str | None,
        prefix: bytes,
        history: int = 4096,
    ) -> None:
        self.store = store
        self.key = key
        self.issuer = issuer
        self.prefix = prefix
        self.counters: Counter[str] = Counter()
        self.proof_seconds = 0.0
        self._history = history
        self.digests: OrderedDict[int, SignedDigest] = OrderedDict()
        self._sign()

    # Submission --------------------------------------------------------------------------

    def check_submission(self, data: bytes) -> Checked:
        """Verify a submitted transaction against the current set; raises Rejected."""
        try:
            tx = codec.decode_transaction(data)
        except codec.ParseError as exc:
            raise Rejected(Reject.MALFORMED, str(exc)) from None
        # The commit lands at a later revision, so locks are checked at the next height.
        checked = verify.check_transaction(tx, self.store.get, self.store.height + 1, self.issuer)
        started = time.perf_counter()
        try:
            verify.verify_proofs(checked)
        finally:
            self.proof_seconds += time.perf_counter() - started
        return checked

    def tx_key(self, digest: bytes) -> bytes:
        return self.prefix + TX_PREFIX + digest.hex().encode()

    def spent_key(self, utxo_id: bytes) -> bytes:
        return self.prefix + SPENT_PREFIX + utxo_id.hex().encode()

    def commit_request(
        self, checked: Checked, data: bytes
    ) -> tuple[list[bytes], list[tuple[bytes, bytes]]]:
        """The etcd transaction: none of the inputs spent and the transaction new, then record
        the transaction and mark its inputs spent, all in one revision."""
        absent = [self.tx_key(checked.digest)] + [self.spent_key(i) for i in checked.spent]
        puts = [(self.tx_key(checked.digest), data)] + [
            (self.spent_key(i), checked.digest) for i in checked.spent
        ]
        return absent, puts

    # Following ---------------------------------------------------------------------------

    def _parse_event(
        self, key: bytes, data: bytes, revision: int, lookup: verify.Lookup
    ) -> Checked:
        try:
            tx = codec.decode_transaction(data)
        except codec.ParseError as exc:
            raise Rejected(Reject.MALFORMED, str(exc)) from None
        checked = verify.check_transaction(tx, lookup, revision, self.issuer)
        if key != self.tx_key(checked.digest):
            raise Rejected(Reject.MALFORMED, "stored under a key that is not its digest")
        return checked

    def apply_events(self, events: list[tuple[int, bytes, bytes]]) -> list[Change]:
        """Apply etcd events (revision, key, value) in order; invalid ones are counted and skipped.

        The proofs of the whole batch are checked with one multi-scalar multiplication; only
        when that fails is each transaction verified on its own to find the bad ones.
        """
        events = [e for e in events if e[0] > self.store.height]
        if not events:
            return []
        overlay = _Overlay(self.store)
        pending: list[tuple[int, Checked | None]] = []
        for revision, key, data in events:
            try:
                checked = self._parse_event(key, data, revision, overlay.get)
            except Rejected as exc:
                self.counters[f"rejected:{exc.reason.value}"] += 1
                pending.append((revision, None))
                continue
            overlay.apply(checked)
            pending.append((revision, checked))
        started = time.perf_counter()
        batch_ok = verify.verify_batch(c for _, c in pending if c is not None)
        self.proof_seconds += time.perf_counter() - started
        if not batch_ok:
            return self._apply_one_by_one(events)
        changes = []
        for revision, ready in pending:
            if ready is not None:
                changes.append(self.store.apply(ready))
                self.counters["applied"] += 1
            self.store.height = revision
            self._sign()
        return changes

    def _apply_one_by_one(self, events: list[tuple[int, bytes, bytes]]) -> list[Change]:
        changes = []
        for revision, key, data in events:
            try:
                checked = self._parse_event(key, data, revision, self.store.get)
                verify.verify_proofs(checked)
            except Rejected as exc:
                self.counters[f"rejected:{exc.reason.value}"] += 1
            else:
                changes.append(self.store.apply(checked))
                self.counters["applied"] += 1
            self.store.height = revision
            self._sign()
        return changes

    def _sign(self) -> None:
        store = self.store
        digest = store.digest()
        signature = self.key.sign(digest_message(store.height, digest))
        self.digests[store.height] = SignedDigest(
            store.height, digest, store.root(), store.issued, store.fees, self.key.did, signature
        )
        while len(self.digests) > self._history:
            self.digests.popitem(last=False)

    @property
    def latest(self) -> SignedDigest:
        return self.digests[next(reversed(self.digests))]
