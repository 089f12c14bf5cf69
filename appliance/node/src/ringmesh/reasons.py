"""Why a datagram, packet or handshake was dropped: the one list behind the counters, the
Prometheus labels (`ringmesh_packets_dropped_total{reason}`,
`ringmesh_handshakes_failed_total{reason}`) and the README."""

from __future__ import annotations

from enum import StrEnum


class Drop(StrEnum):
    """A datagram or onion packet that was dropped (counter `dropped:<reason>`)."""

    BAD_SIZE = "bad_size"  # not exactly one datagram's size
    BAD_TYPE = "bad_type"  # unknown datagram type
    UNKNOWN_SESSION = "unknown_session"  # DATA for no session we hold
    BAD_MAC = "bad_mac"  # DATA that does not authenticate
    REPLAY = "replay"  # DATA counter already seen or behind the window
    LINK_QUEUE_FULL = "link_queue_full"  # waiting for a handshake, and the queue is full
    BAD_MESSAGE = "bad_message"  # unknown link message type
    BAD_DESCRIPTOR = "bad_descriptor"  # a pushed descriptor that does not verify
    BAD_ONION = "bad_onion"  # no onion key of ours peels it
    ONION_REPLAY = "onion_replay"  # its hop tag is in the epoch's replay filter
    UNKNOWN_NEXT_HOP = "unknown_next_hop"  # forward to a relay we do not pin
    PEER_DOWN = "peer_down"  # next hop unreachable, reconnect backing off
    QUEUE_FULL = "queue_full"  # mixing delay queue full
    MAILBOX_FULL = "mailbox_full"  # per-mailbox or mailbox count cap
    MAILBOX_EXPIRED = "mailbox_expired"  # held past its TTL
    SOCKET_ERROR = "socket_error"  # recvfrom failed (ICMP errors surface here)
    SEND_FAILED = "send_failed"  # sendto failed (full buffer, unreachable)
    INTERNAL_ERROR = "internal_error"  # a bug, caught so the relay keeps running

    @property
    def counter(self) -> str:
        return f"dropped:{self.value}"


class HandshakeFailure(StrEnum):
    """A link handshake that did not complete (counter `handshake_failed:<reason>`)."""

    MALFORMED = "malformed"  # a handshake datagram of the wrong shape
    BAD_COOKIE = "bad_cookie"  # a cookie this relay did not issue for this address
    BAD_KEY = "bad_key"  # an invalid X25519 or ML-KEM key
    BAD_DESCRIPTOR = "bad_descriptor"  # the peer's descriptor does not verify or expired
    BAD_SIGNATURE = "bad_signature"  # the transcript signature does not verify
    BAD_FINISH = "bad_finish"  # FINISH does not authenticate
    UNEXPECTED = "unexpected"  # an answer to no handshake of ours
    REPLAY = "replay"  # a retransmitted or replayed INIT / FINISH
    TIMEOUT = "timeout"  # no answer in time
    UNPINNED = "unpinned"  # a relay whose identity is not in [[relays]]
    WRONG_IDENTITY = "wrong_identity"  # not the identity we dialled
    NOT_A_RELAY = "not_a_relay"  # a client was answered by something else
    HALF_OPEN_FULL = "half_open_full"  # all half-open handshake slots are taken
    SOURCE_HALF_OPEN_FULL = "source_half_open_full"  # this address's half-open slots
    SESSIONS_FULL = "sessions_full"  # all session slots open to clients are taken
    SOURCE_SESSIONS_FULL = "source_sessions_full"  # this address's session slots

    @property
    def counter(self) -> str:
        return f"handshake_failed:{self.value}"
