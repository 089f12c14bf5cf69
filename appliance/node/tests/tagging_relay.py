"""A relay process modified to tag payloads: `python tagging_relay.py MODE <ringmesh arguments>`.

MODE "tag": flip one payload bit in every onion packet this relay forwards (a malicious
first hop marking its client's traffic). MODE "untag": flip the same bit in every onion
packet that arrives, before peeling it (a colluding last hop removing the mark).
MODE "honest": no change. Counts what it did in `status --json` counters.
"""

from __future__ import annotations

import sys

from ringmesh import cli
from ringmesh.relay import Relay
from ringmesh.wire import HEADER_LEN

TAG_AT = HEADER_LEN + 40  # a byte inside the payload


def flip(packet: bytes) -> bytes:
    tagged = bytearray(packet)
    tagged[TAG_AT] ^= 0x01
    return bytes(tagged)


def install(mode: str) -> None:
    if mode == "tag":
        forward = Relay._forward

        def tagging_forward(self: Relay, identity: bytes, packet: bytes, now: float) -> None:
            self.counters["tagged"] += 1
            forward(self, identity, flip(packet), now)

        Relay._forward = tagging_forward  # type: ignore[method-assign]
    elif mode == "untag":
        on_onion = Relay._on_onion

        def untagging_on_onion(self: Relay, packet: bytes, now: float) -> None:
            self.counters["untagged"] += 1
            on_onion(self, flip(packet), now)

        Relay._on_onion = untagging_on_onion  # type: ignore[method-assign]
    elif mode != "honest":
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    install(sys.argv[1])
    sys.exit(cli.main(sys.argv[2:]))
