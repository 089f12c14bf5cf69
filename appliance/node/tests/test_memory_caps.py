"""The relay's global memory caps on a simulated network (real Relay and Client objects, fake
clock): deliveries to random mailboxes stop at the caps, are counted by reason, and a user
whose client is connected still gets its messages."""

from __future__ import annotations

import os
from pathlib import Path

from simnet import SimNet
from test_relay import hop, inject

from ringmesh.client import MessageReceived
from ringmesh.mailbox import BOX_OVERHEAD, ITEM_OVERHEAD, MAX_CLAIMS
from ringmesh.onion import build_packet
from ringmesh.reasons import Drop
from ringmesh.wire import CMD_DELIVER, MSG_CLAIM_REPLY, PAYLOAD_LEN, SURB_ID_LEN

MAX_MAILBOXES = 20
ITEM = SURB_ID_LEN + PAYLOAD_LEN + ITEM_OVERHEAD  # what one held packet counts
MAX_BYTES = 20 * (ITEM + BOX_OVERHEAD) + 5 * ITEM  # 20 mailboxes of one, and five more


def test_random_mailbox_deliveries_stop_at_the_caps_and_users_still_receive(
    tmp_path: Path,
) -> None:
    net = SimNet(
        tmp_path,
        3,
        relay_config={
            "mailbox_max_mailboxes": MAX_MAILBOXES,
            "mailbox_max_bytes": MAX_BYTES,
            "mailbox_max_packets": 3,
        },
    )
    net.run(3.0)
    home = net.relays[net.addrs[0]]
    attacker, alice, bob = (
        net.add_client(n, i) for n, i in (("mallory", 0), ("alice", 1), ("bob", 0))
    )
    bob.client.receive_messages()
    net.connect(attacker, alice, bob)

    target = hop(net.keys[0].current.descriptor)
    ids = [os.urandom(16) for _ in range(40)]
    for mailbox_id in ids:  # 40 new mailboxes, one packet each: 20 fit
        inject(
            attacker, build_packet([target], CMD_DELIVER, mailbox_id, os.urandom(PAYLOAD_LEN))[1]
        )
        net.run(0.01)
    for _ in range(8):  # to mailboxes that exist: the byte cap, then 3 per mailbox
        inject(attacker, build_packet([target], CMD_DELIVER, ids[0], os.urandom(PAYLOAD_LEN))[1])
        inject(attacker, build_packet([target], CMD_DELIVER, ids[1], os.urandom(PAYLOAD_LEN))[1])
        inject(attacker, build_packet([target], CMD_DELIVER, ids[2], os.urandom(PAYLOAD_LEN))[1])
        net.run(0.01)
    c = home.counters
    assert c[Drop.MAILBOXES_FULL.counter] == 20
    assert c[Drop.MAILBOX_FULL.counter] > 0
    assert c[Drop.MAILBOX_BYTES_FULL.counter] > 0
    assert home.mailboxes.holding <= MAX_MAILBOXES
    assert home.mailboxes.bytes <= MAX_BYTES
    held = home.mailboxes.depth() * ITEM + home.mailboxes.holding * BOX_OVERHEAD
    assert held == home.mailboxes.bytes  # the accounting is exact

    # Bob's mailbox is claimed by his live session: his messages are handed over, not held.
    body = os.urandom(3000)
    alice.client.send_message(body, bob.keys.identity_public, net.keys[0].identity_public, net.now)
    net.run(20.0, until=lambda: bool(net.events_of(bob, MessageReceived)))
    assert [e.body for e in net.events_of(bob, MessageReceived)] == [body]
    assert home.mailboxes.bytes <= MAX_BYTES

    # Claims are bounded per session; what expires gives its bytes back.
    session = next(
        s for s in home.link.sessions.values() if s.peer_identity == attacker.keys.identity_public
    )
    assert attacker.client.session is not None
    for _ in range(3 * MAX_CLAIMS):
        claim = bytes([MSG_CLAIM_REPLY]) + os.urandom(32)
        attacker.client.link.send(attacker.client.session, claim)
    net.run(0.5)
    assert len(home.mailboxes.claims[session]) == MAX_CLAIMS
    assert home.mailboxes.bytes > 0
    home.mailboxes.expire(net.now + home.config.mailbox_ttl_seconds + 1, home.link.sessions)
    assert home.mailboxes.bytes == 0 and home.mailboxes.holding == 0


def test_packets_waiting_out_their_delays_stop_at_the_cap(tmp_path: Path) -> None:
    net = SimNet(tmp_path, 2, relay_config={"max_held_packets": 10})
    net.run(3.0)
    relay = net.relays[net.addrs[0]]
    mallory = net.add_client("mallory", 0)
    net.connect(mallory)
    # Two hops, the first held for a minute: the sender chooses the delay, so a flood of
    # packets asking for long delays is what fills a mix.
    hops = [hop(net.keys[0].current.descriptor, 60_000_000), hop(net.keys[1].current.descriptor)]
    for _ in range(25):
        inject(mallory, build_packet(hops, CMD_DELIVER, os.urandom(16), os.urandom(PAYLOAD_LEN))[1])
    net.run(1.0)
    assert relay.queue_depth() == 10
    # Mine, and the client's own cover packets that came while the queue was full.
    assert relay.counters[Drop.QUEUE_FULL.counter] >= 15
    net.run(61.0)  # they leave on time, and the room is free again
    assert relay.queue_depth() < 10
    refused = relay.counters[Drop.QUEUE_FULL.counter]
    inject(mallory, build_packet(hops, CMD_DELIVER, os.urandom(16), os.urandom(PAYLOAD_LEN))[1])
    net.run(0.01)
    assert relay.counters[Drop.QUEUE_FULL.counter] == refused
    assert max(due for due, *_ in relay._delayed) - net.now > 59  # held for its minute
