"""Prometheus exposition: a collector that reads the relay's counters at scrape time.

Nothing is touched per packet beyond the relay's own Counter, keeping the hot path lean.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .reasons import CertificateFailure, Drop, HandshakeFailure, Reason
from .relay import Relay


class RelayCollector(Collector):
    def __init__(self, relay: Callable[[], Relay]) -> None:
        self._relay = relay

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        relay = self._relay()
        c = relay.counters
        packets = CounterMetricFamily(
            "ringmesh_packets", "Onion packets by direction", labels=["direction"]
        )
        packets.add_metric(["in"], c["packets_in"])
        packets.add_metric(["out"], c["packets_out"])
        yield packets
        datagrams = CounterMetricFamily("ringmesh_datagrams_in", "UDP datagrams received")
        datagrams.add_metric([], c["datagrams_in"])
        yield datagrams
        dropped = CounterMetricFamily(
            "ringmesh_packets_dropped", "Datagrams or packets dropped, by reason", labels=["reason"]
        )
        failed = CounterMetricFamily(
            "ringmesh_handshakes_failed", "Failed link handshakes, by reason", labels=["reason"]
        )
        refused = CounterMetricFamily(
            "ringmesh_certificates_refused",
            "Peers' signing certificates refused (handshakes, descriptors, votes), by reason",
            labels=["reason"],
        )
        # Every reason of the enumeration is exported (zero until it happens), so alerts and
        # dashboards can name any of them; the counters hold no reason outside it.
        exported: tuple[tuple[CounterMetricFamily, list[Reason]], ...] = (
            (dropped, list(Drop)),
            (failed, list(HandshakeFailure)),
            (refused, list(CertificateFailure)),
        )
        for family, reasons in exported:
            for reason in reasons:
                family.add_metric([reason.value], c[reason.counter])
            yield family
        ok = CounterMetricFamily("ringmesh_handshakes_ok", "Completed link handshakes")
        ok.add_metric([], c["handshake_ok"])
        yield ok
        cover = CounterMetricFamily("ringmesh_cover_packets", "Cover traffic", labels=["kind"])
        for kind in ("sent_loop", "sent_drop", "received"):
            cover.add_metric([kind], c[f"cover_{kind}"])
        yield cover
        now = time.time()
        for name, doc, value in (
            (
                "ringmesh_queue_depth",
                "Packets waiting in the mixing delay queue",
                relay.queue_depth(),
            ),
            ("ringmesh_mailbox_packets", "Packets held in mailboxes", relay.mailboxes.depth()),
            ("ringmesh_mailboxes", "Mailboxes in memory", len(relay.mailboxes)),
            (
                "ringmesh_prekey_bundles",
                "Users' end-to-end prekey bundles held to hand to senders",
                len(relay.prekeys),
            ),
            (
                "ringmesh_mailbox_bytes",
                "Bytes held in mailboxes (items and their bookkeeping)",
                relay.mailboxes.bytes,
            ),
            (
                "ringmesh_peers_up",
                "Pinned relay peers with a live session",
                len(relay.peers.live(now)),
            ),
            ("ringmesh_key_epoch", "Current key epoch", relay.keys.current.epoch),
            (
                "ringmesh_replay_filter_packets",
                "Onion packets recorded in the current epoch's replay filter",
                relay.onion_keys[0].replay.count,
            ),
            (
                "ringmesh_replay_filter_budget_packets",
                "Packets the current epoch's replay filter is sized for (then a new epoch)",
                relay.onion_keys[0].replay.budget,
            ),
            (
                "ringmesh_key_epoch_expiry_timestamp_seconds",
                "When the current key epoch expires",
                relay.keys.current.expires,
            ),
        ):
            gauge = GaugeMetricFamily(name, doc)
            gauge.add_metric([], value)
            yield gauge
        certificate = relay.keys.certificate
        if certificate is not None:  # an offline identity's signing certificate
            expiry = GaugeMetricFamily(
                "ringmesh_signing_certificate_expiry_timestamp_seconds",
                "When the signing certificate from the offline identity key expires",
            )
            expiry.add_metric([], certificate.expires)
            yield expiry


def serve_metrics(address: tuple[str, int], relay: Callable[[], Relay]) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(RelayCollector(relay))
    start_http_server(address[1], addr=address[0], registry=registry)
    return registry
