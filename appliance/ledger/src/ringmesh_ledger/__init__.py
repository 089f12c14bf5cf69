"""Ringmesh confidential ledger: a UTXO set of Coins, Memos and State with zero-knowledge proofs."""

__version__ = "0.1.0"
