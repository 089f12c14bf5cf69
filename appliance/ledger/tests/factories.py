"""Wallets and a dict-backed UTXO set for tests that need real transactions."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ringmesh_ledger import builder, codec, verify
from ringmesh_ledger.keys import SigningKey
from ringmesh_ledger.model import Output


def issuance(issuer: SigningKey, owner: SigningKey, *values: int) -> builder.Built:
    """A transaction in which `issuer` creates new coins of `values` for `owner`."""
    return builder.build(
        [],
        [builder.CoinSpec(owner.did, v) for v in values],
        [issuer],
        issue=sum(values),
        issuer=issuer.did,
    )


@dataclass
class Ledger:
    issuer: SigningKey = field(default_factory=SigningKey.generate)
    utxos: dict[bytes, Output] = field(default_factory=dict)
    height: int = 100

    def apply(self, built: builder.Built) -> verify.Checked:
        tx = codec.decode_transaction(codec.encode_transaction(built.tx))
        checked = verify.check_transaction(tx, self.utxos.get, self.height, self.issuer.did)
        verify.verify_proofs(checked)
        for spent in checked.spent:
            del self.utxos[spent]
        self.utxos.update(checked.created)
        return checked

    def issue(self, owner: SigningKey, *values: int) -> list[builder.Opening]:
        built = issuance(self.issuer, owner, *values)
        self.apply(built)
        return list(built.openings)


def spend(opening: builder.Opening, value: int | None = None) -> builder.Spend:
    """Spend a coin; `value` lets a test lie about it."""
    return builder.Spend(opening.utxo_id, opening.output, opening.value if value is None else value)


def transfer(
    ledger: Ledger,
    sender: SigningKey,
    coins: list[builder.Opening],
    to: SigningKey,
    amount: int,
    fee: int = 0,
) -> builder.Built:
    change = sum(c.value for c in coins) - amount - fee
    specs: list[builder.OutputSpec] = [
        builder.CoinSpec(to.did, amount),
        builder.CoinSpec(sender.did, change),
    ]
    return builder.build([spend(c) for c in coins], specs, [sender], fee=fee)


def replace(obj: Any, **changes: Any) -> Any:
    """dataclasses.replace for tests that change a field chosen at run time."""
    return dataclasses.replace(obj, **changes)
