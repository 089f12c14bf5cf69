"""The drop, failure and refusal reasons are one enumeration: the counters accept no other,
the metrics export every member and the README documents every member."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from simnet import SimNet

from ringmesh.metrics import RelayCollector
from ringmesh.reasons import (
    FAMILIES,
    CertificateFailure,
    Counters,
    Drop,
    HandshakeFailure,
    Refusal,
)

README = Path(__file__).parent.parent / "README.md"


def test_every_counted_reason_is_in_the_enumeration(tmp_path: Path) -> None:
    # Every counter a relay, its link layer or a client keeps is a Counters, which takes a
    # `<prefix>:<reason>` key only if the enumeration has that reason: a reason spelled
    # anywhere else raises in the first test that counts it.
    net = SimNet(tmp_path, 1)
    relay = next(iter(net.relays.values()))
    client = net.add_client("alice", 0).client
    for counters in (relay.counters, relay.link.counters, client.counters, client.link.counters):
        assert isinstance(counters, Counters)
    assert relay.link.counters is relay.counters  # one set of counters per relay
    for family in FAMILIES:
        for reason in family:
            relay.counters[reason.counter] += 1
    for unlisted in ("dropped:too_big", "handshake_failed:slow", "directory_refused:ugly"):
        with pytest.raises(KeyError, match=unlisted):
            relay.counters[unlisted] += 1
    relay.counters["packets_in"] += 1  # plain tallies are not reasons


def test_the_metrics_export_every_drop_and_handshake_failure(tmp_path: Path) -> None:
    net = SimNet(tmp_path, 1)
    relay = next(iter(net.relays.values()))
    relay.counters[Drop.ONION_REPLAY.counter] += 3
    registry = CollectorRegistry()
    registry.register(RelayCollector(lambda: relay))
    for name, family in (
        ("ringmesh_packets_dropped_total", Drop),
        ("ringmesh_handshakes_failed_total", HandshakeFailure),
        ("ringmesh_certificates_refused_total", CertificateFailure),
    ):
        labels = {
            s.labels["reason"]: s.value
            for metric in registry.collect()
            for s in metric.samples
            if s.name == name
        }
        assert set(labels) == {r.value for r in family}
    assert (
        registry.get_sample_value("ringmesh_packets_dropped_total", {"reason": "onion_replay"}) == 3
    )


def test_the_readme_documents_every_reason() -> None:
    text = README.read_text()
    missing = [
        r.counter
        for r in [*Drop, *HandshakeFailure, *Refusal, *CertificateFailure]
        if f"| `{r}` |" not in text
    ]
    assert not missing, f"undocumented in {README.name}: {missing}"
