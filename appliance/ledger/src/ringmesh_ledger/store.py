"""The in-memory UTXO set: one partition per type, address maps, a Merkle digest, snapshots.

The digest is the root of a Merkle tree over the UTXOs sorted by id, bound to the public
totals (issued, fees); a node signs it per height and a client checks a UTXO it is shown
against a root that a majority of the first ring signed.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from . import codec
from .model import Output, OutputCoin, UtxoType, utxo_type
from .verify import Checked

_EMPTY_ROOT = hashlib.sha256(b"ringmesh-ledger-empty").digest()
_SNAPSHOT_MAGIC = b"RMLSNAP1"


def leaf_hash(utxo_id: bytes, encoded: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + utxo_id + hashlib.sha256(encoded).digest()).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def state_digest(root: bytes, issued: int, fees: int) -> bytes:
    totals = issued.to_bytes(16, "little") + fees.to_bytes(16, "little")
    return hashlib.sha256(b"ringmesh-ledger-state-v1" + root + totals).digest()


def merkle_root_from_path(leaf: bytes, path: list[tuple[bool, bytes]]) -> bytes:
    """Root reached from a leaf by its path of (sibling is on the left, sibling hash)."""
    node = leaf
    for left, sibling in path:
        node = _node(sibling, node) if left else _node(node, sibling)
    return node


class SnapshotError(ValueError):
    pass


@dataclass(frozen=True)
class Change:
    """What one applied transaction did, for persistence."""

    spent: tuple[bytes, ...]
    created: tuple[tuple[bytes, Output, bytes], ...]


class UtxoStore:
    def __init__(self) -> None:
        self.partitions: dict[UtxoType, dict[bytes, Output]] = {t: {} for t in UtxoType}
        self.by_owner: dict[UtxoType, dict[str, set[bytes]]] = {t: {} for t in UtxoType}
        self.by_script: dict[UtxoType, dict[str, set[bytes]]] = {t: {} for t in UtxoType}
        self._encoded: dict[bytes, bytes] = {}
        self._type: dict[bytes, UtxoType] = {}
        self.height = 0
        self.issued = 0
        self.fees = 0
        self._levels: list[list[bytes]] | None = None
        self._order: list[bytes] = []

    # Queries -------------------------------------------------------------------------------

    def get(self, utxo_id: bytes) -> Output | None:
        kind = self._type.get(utxo_id)
        return None if kind is None else self.partitions[kind][utxo_id]

    def encoded(self, utxo_id: bytes) -> bytes:
        return self._encoded[utxo_id]

    def counts(self) -> dict[UtxoType, int]:
        return {t: len(p) for t, p in self.partitions.items()}

    def owned_by(self, did: str) -> list[tuple[bytes, Output]]:
        out = []
        for kind in UtxoType:
            for utxo_id in sorted(self.by_owner[kind].get(did, ())):
                out.append((utxo_id, self.partitions[kind][utxo_id]))
        return out

    def __len__(self) -> int:
        return len(self._type)

    # Changes -------------------------------------------------------------------------------

    def _index(
        self, kind: UtxoType, key: str, utxo_id: bytes, maps: dict[UtxoType, dict[str, set[bytes]]]
    ) -> None:
        maps[kind].setdefault(key, set()).add(utxo_id)

    def _unindex(
        self, kind: UtxoType, key: str, utxo_id: bytes, maps: dict[UtxoType, dict[str, set[bytes]]]
    ) -> None:
        ids = maps[kind][key]
        ids.discard(utxo_id)
        if not ids:
            del maps[kind][key]

    def add(self, utxo_id: bytes, output: Output, encoded: bytes | None = None) -> None:
        if utxo_id in self._type:
            raise ValueError("UTXO ids are never reused")
        kind = utxo_type(output)
        self.partitions[kind][utxo_id] = output
        self._type[utxo_id] = kind
        self._encoded[utxo_id] = encoded if encoded is not None else codec.encode_output(output)
        self._index(kind, output.owner, utxo_id, self.by_owner)
        if not isinstance(output, OutputCoin):
            self._index(kind, output.script_address, utxo_id, self.by_script)
        self._levels = None

    def remove(self, utxo_id: bytes) -> None:
        kind = self._type.pop(utxo_id)
        output = self.partitions[kind].pop(utxo_id)
        del self._encoded[utxo_id]
        self._unindex(kind, output.owner, utxo_id, self.by_owner)
        if not isinstance(output, OutputCoin):
            self._unindex(kind, output.script_address, utxo_id, self.by_script)
        self._levels = None

    def apply(self, checked: Checked) -> Change:
        """Spend the inputs and add the outputs of a verified transaction (atomically: the
        checks already passed, so nothing here can fail half-way)."""
        for utxo_id in checked.spent:
            self.remove(utxo_id)
        created = []
        for utxo_id, output in checked.created:
            encoded = codec.encode_output(output)
            self.add(utxo_id, output, encoded)
            created.append((utxo_id, output, encoded))
        self.issued += checked.tx.body.issue
        self.fees += checked.tx.body.fee
        return Change(tuple(checked.spent), tuple(created))

    # Digest --------------------------------------------------------------------------------

    def _tree(self) -> list[list[bytes]]:
        if self._levels is None:
            self._order = sorted(self._type)
            level = [leaf_hash(i, self._encoded[i]) for i in self._order]
            levels = [level]
            while len(level) > 1:
                level = [
                    _node(level[i], level[i + 1]) if i + 1 < len(level) else level[i]
                    for i in range(0, len(level), 2)
                ]
                levels.append(level)
            self._levels = levels
        return self._levels

    def root(self) -> bytes:
        levels = self._tree()
        return levels[-1][0] if levels[0] else _EMPTY_ROOT

    def digest(self) -> bytes:
        return state_digest(self.root(), self.issued, self.fees)

    def membership_path(self, utxo_id: bytes) -> list[tuple[bool, bytes]]:
        levels = self._tree()
        index = self._order.index(utxo_id)
        path = []
        for level in levels[:-1]:
            sibling = index ^ 1
            if sibling < len(level):
                path.append((sibling < index, level[sibling]))
            index //= 2
        return path

    # Snapshots -----------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        parts = [
            _SNAPSHOT_MAGIC,
            struct.pack(
                "<Q16s16sI",
                self.height,
                self.issued.to_bytes(16, "little"),
                self.fees.to_bytes(16, "little"),
                len(self._type),
            ),
        ]
        for utxo_id in sorted(self._type):
            encoded = self._encoded[utxo_id]
            parts += [utxo_id, struct.pack("<I", len(encoded)), encoded]
        return b"".join(parts)

    @classmethod
    def from_snapshot(cls, data: bytes) -> UtxoStore:
        store = cls()
        try:
            if data[:8] != _SNAPSHOT_MAGIC:
                raise SnapshotError("not a ledger snapshot")
            height, issued, fees, count = struct.unpack_from("<Q16s16sI", data, 8)
            pos = 8 + struct.calcsize("<Q16s16sI")
            for _ in range(count):
                utxo_id = data[pos : pos + 32]
                (size,) = struct.unpack_from("<I", data, pos + 32)
                encoded = data[pos + 36 : pos + 36 + size]
                pos += 36 + size
                store.add(utxo_id, codec.decode_output(encoded), encoded)
        except (struct.error, codec.ParseError, ValueError) as exc:
            raise SnapshotError(f"snapshot is damaged: {exc}") from None
        if pos != len(data):
            raise SnapshotError("snapshot is damaged: trailing bytes")
        store.height = height
        store.issued = int.from_bytes(issued, "little")
        store.fees = int.from_bytes(fees, "little")
        return store
