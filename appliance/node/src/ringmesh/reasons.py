"""Why something was dropped or refused: one list for counters, metrics and the docs.

A drop is counted as `dropped:<reason>` (status --json counters) and exported as
ringmesh_packets_dropped_total{reason="<reason>"}. The link layer (link.py) counts its
own reasons with the same spelling.
"""

from __future__ import annotations

import enum


class Drop(enum.StrEnum):
    # link layer: datagrams
    BAD_SIZE = "bad_size"  # not exactly one datagram long
    BAD_TYPE = "bad_type"  # unknown datagram type
    UNKNOWN_SESSION = "unknown_session"  # no session with that id
    REPLAY = "replay"  # a link counter seen before or too old
    BAD_MAC = "bad_mac"  # AEAD open failed
    LINK_QUEUE_FULL = "link_queue_full"  # too much waiting for a handshake
    # relay: onion packets and control messages
    BAD_ONION = "bad_onion"  # header MAC or key exchange failed under every held key
    ONION_REPLAY = "onion_replay"  # a hop secret seen before in this key epoch
    UNKNOWN_NEXT_HOP = "unknown_next_hop"  # FORWARD to a relay that is not pinned
    QUEUE_FULL = "queue_full"  # too many packets waiting out their delays
    PEER_DOWN = "peer_down"  # next relay unreachable, reconnect backing off
    BAD_MESSAGE = "bad_message"  # unknown link message type
    BAD_DESCRIPTOR = "bad_descriptor"  # a peer's descriptor that does not verify
    BAD_DIRECTORY_SIGNATURE = "bad_directory_signature"  # a peer's directory signature
    MAILBOX_FULL = "mailbox_full"  # per-mailbox or mailbox-count cap
    MAILBOX_EXPIRED = "mailbox_expired"  # held past mailbox.ttl_seconds
    # relay daemon: sockets
    SOCKET_ERROR = "socket_error"  # an ICMP error surfaced on receive
    SEND_FAILED = "send_failed"  # the kernel refused a datagram
    INTERNAL_ERROR = "internal_error"  # a bug, logged without packet data
    # client
    BAD_FRAGMENT = "bad_fragment"  # a payload that does not open: tagged, or not for us
    BAD_REPLY = "bad_reply"  # an ack or reply changed on the way
    UNEXPECTED_ITEM = "unexpected_item"  # a mailbox item for none of our mailboxes
    NO_PATH = "no_path"  # the directory has too few relays for a cover packet


class Refusal(enum.StrEnum):
    """Why a client refused a directory (counted as `directory_refused:<reason>`)."""

    MALFORMED = "malformed"
    BAD_DESCRIPTOR = "bad_descriptor"  # a listed descriptor's signature does not verify
    STALE = "stale"  # not the current or previous epoch
    TOO_FEW_SIGNATURES = "too_few_signatures"  # fewer than a majority of the pinned ring
    NO_HOME = "no_home"  # the client's own home relay is not listed


def dropped(reason: Drop) -> str:
    return f"dropped:{reason}"


def refused(reason: Refusal) -> str:
    return f"directory_refused:{reason}"
