"""Talking to ledger nodes: submit transactions, and accept a state answer only when a
majority of the first ring signed the digest it is proved against."""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from ringmesh.did import public_from_did

from . import codec
from .config import Peer
from .ledger import check_signed_digest
from .model import Output
from .store import leaf_hash, merkle_root_from_path, state_digest


class UntrustedAnswer(Exception):
    """No majority of the first ring vouches for the answer."""


class NodeError(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(f"HTTP {status}: {body.get('error', '')} {body.get('detail', '')}".strip())
        self.status = status
        self.body = body


@dataclass(frozen=True)
class TrustedUtxos:
    height: int
    digest: bytes
    signers: tuple[str, ...]
    utxos: tuple[tuple[bytes, Output], ...]


def request(
    url: str, data: bytes | None = None, timeout: float = 30, context: ssl.SSLContext | None = None
) -> Any:
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    if data is not None:
        req.add_header("Content-Type", "application/octet-stream")
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            body = json.loads(exc.read())
        except ValueError:
            body = {}
        raise NodeError(exc.code, body) from None


class LedgerClient:
    def __init__(self, ring: tuple[Peer, ...], context: ssl.SSLContext | None = None) -> None:
        if not ring:
            raise ValueError("the first ring is empty")
        self.ring = ring
        self.context = context

    def submit(self, data: bytes) -> dict[str, Any]:
        last: Exception | None = None
        for peer in self.ring:
            try:
                result: dict[str, Any] = request(
                    peer.url + "/v1/transactions", data, context=self.context
                )
                return result
            except (urllib.error.URLError, OSError) as exc:
                last = exc
        raise NodeError(503, {"error": "no ledger node answered", "detail": repr(last)})

    def digest_signers(self, height: int, digest: bytes) -> list[str]:
        """The first-ring dids whose signed digest at `height` equals `digest`."""
        signers = []
        for peer in self.ring:
            try:
                signed = request(
                    f"{peer.url}/v1/digests/{height}", context=self.context, timeout=10
                )
            except (NodeError, urllib.error.URLError, OSError):
                continue
            if signed.get("did") != peer.did or signed.get("digest") != digest.hex():
                continue
            if check_signed_digest(
                public_from_did(peer.did), height, digest, bytes.fromhex(signed["signature"])
            ):
                signers.append(peer.did)
        return signers

    def trusted(self, path: str) -> TrustedUtxos:
        """Ask the ring members in turn for `path`; check each UTXO against the signed root and
        the root against a majority of the first ring."""
        errors = []
        for peer in self.ring:
            try:
                answer = request(peer.url + path, context=self.context)
            except NodeError as exc:
                answer = exc.body
                if "signed" not in answer:
                    errors.append(str(exc))
                    continue
            except (urllib.error.URLError, OSError) as exc:
                errors.append(repr(exc))
                continue
            try:
                return self._check(answer)
            except UntrustedAnswer as exc:
                errors.append(f"{peer.did}: {exc}")
        raise UntrustedAnswer("; ".join(errors))

    def _check(self, answer: dict[str, Any]) -> TrustedUtxos:
        signed = answer["signed"]
        height, root = int(signed["height"]), bytes.fromhex(signed["root"])
        digest = state_digest(root, int(signed["issued"]), int(signed["fees"]))
        if digest.hex() != signed["digest"]:
            raise UntrustedAnswer("digest does not match root and totals")
        utxos = []
        for item in answer["utxos"]:
            utxo_id, encoded = bytes.fromhex(item["id"]), base64.b64decode(item["output"])
            path = [(bool(left), bytes.fromhex(h)) for left, h in item["path"]]
            if merkle_root_from_path(leaf_hash(utxo_id, encoded), path) != root:
                raise UntrustedAnswer("a UTXO is not under the signed root")
            utxos.append((utxo_id, codec.decode_output(encoded)))
        signers = self.digest_signers(height, digest)
        if len(signers) * 2 <= len(self.ring):
            raise UntrustedAnswer(
                f"only {len(signers)} of {len(self.ring)} first-ring nodes signed this state"
            )
        return TrustedUtxos(height, digest, tuple(signers), tuple(utxos))
