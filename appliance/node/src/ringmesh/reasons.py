"""Why something was dropped, failed or refused: the one list behind the counters, the
Prometheus labels (`ringmesh_packets_dropped_total{reason}`,
`ringmesh_handshakes_failed_total{reason}`), `status --json` and the README tables.

A reason is counted under `<prefix>:<reason>` (`Drop.REPLAY.counter == "dropped:replay"`).
Counters (below) refuses any prefixed key that is not a member, so a reason spelled
outside the enumeration fails the first test that reaches it instead of going unexported.
"""

from __future__ import annotations

from collections import Counter
from enum import StrEnum
from typing import ClassVar


class Reason(StrEnum):
    prefix: ClassVar[str]

    @property
    def counter(self) -> str:
        return f"{self.prefix}:{self.value}"


class Drop(Reason):
    """A datagram, onion packet or mailbox item that was dropped (`dropped:<reason>`)."""

    # link layer: datagrams
    BAD_SIZE = "bad_size"  # not exactly one datagram's size
    BAD_TYPE = "bad_type"  # unknown datagram type
    UNKNOWN_SESSION = "unknown_session"  # DATA for no session we hold
    BAD_MAC = "bad_mac"  # DATA that does not authenticate
    REPLAY = "replay"  # DATA counter already seen or behind the window
    LINK_QUEUE_FULL = "link_queue_full"  # waiting for a handshake, and the queue is full
    # relay: onion packets and control messages
    BAD_MESSAGE = "bad_message"  # unknown link message type
    BAD_DESCRIPTOR = "bad_descriptor"  # a pushed descriptor that does not verify
    BAD_DIRECTORY_SIGNATURE = "bad_directory_signature"  # a peer's directory signature
    BAD_ONION = "bad_onion"  # no onion key of ours peels it
    ONION_REPLAY = "onion_replay"  # its hop tag is in the epoch's replay filter
    UNKNOWN_NEXT_HOP = "unknown_next_hop"  # forward to a relay we do not pin
    PEER_DOWN = "peer_down"  # next hop unreachable, reconnect backing off
    QUEUE_FULL = "queue_full"  # mixing.max_held_packets wait out their delays
    MAILBOX_FULL = "mailbox_full"  # this mailbox holds mailbox.max_packets
    MAILBOXES_FULL = "mailboxes_full"  # mailbox.max_mailboxes mailboxes hold packets
    MAILBOX_BYTES_FULL = "mailbox_bytes_full"  # mailboxes hold mailbox.max_bytes in all
    MAILBOX_EXPIRED = "mailbox_expired"  # held past its TTL
    # relay daemon: sockets
    SOCKET_ERROR = "socket_error"  # recvfrom failed (ICMP errors surface here)
    SEND_FAILED = "send_failed"  # sendto failed (full buffer, unreachable)
    INTERNAL_ERROR = "internal_error"  # a bug, caught so the relay keeps running
    # client
    BAD_FRAGMENT = "bad_fragment"  # a payload that does not open: tagged, or not for us
    BAD_REPLY = "bad_reply"  # an ack or reply changed on the way
    UNEXPECTED_ITEM = "unexpected_item"  # a mailbox item for none of our mailboxes
    SEALED_UNOPENED = "sealed_unopened"  # a message sealed to a prekey we do not hold
    BAD_PREKEY = "bad_prekey"  # a prekey bundle that does not verify (relay or client)
    NO_PATH = "no_path"  # the directory has too few relays for a cover packet


class HandshakeFailure(Reason):
    """A link handshake that did not complete (`handshake_failed:<reason>`)."""

    MALFORMED = "malformed"  # a handshake datagram of the wrong shape
    BAD_COOKIE = "bad_cookie"  # a cookie this relay did not issue for this address
    BAD_KEY = "bad_key"  # an invalid X25519 or ML-KEM key
    BAD_DESCRIPTOR = "bad_descriptor"  # the peer's descriptor does not verify or expired
    BAD_CERTIFICATE = "bad_certificate"  # its signing certificate was refused (see below)
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


class CertificateFailure(Reason):
    """A signing-key certificate that was refused (`certificate_refused:<reason>`), in a
    handshake, a descriptor or a directory."""

    MALFORMED = "malformed"  # wrong length or version, or missing where one is needed
    BAD_SIGNATURE = "bad_signature"  # not signed by the identity key it names
    WRONG_IDENTITY = "wrong_identity"  # certifies another identity than the descriptor's
    EXPIRED = "expired"  # its lifetime is over


class Refusal(Reason):
    """Why a client refused a directory (`directory_refused:<reason>`)."""

    MALFORMED = "malformed"
    BAD_DESCRIPTOR = "bad_descriptor"  # a listed descriptor's signature does not verify
    STALE = "stale"  # not the current or previous epoch
    TOO_FEW_SIGNATURES = "too_few_signatures"  # fewer than a majority of the pinned ring
    NO_HOME = "no_home"  # the client's own home relay is not listed


# StrEnum forbids members named `prefix`, so the prefix is set after the class is made.
Drop.prefix = "dropped"
HandshakeFailure.prefix = "handshake_failed"
Refusal.prefix = "directory_refused"
CertificateFailure.prefix = "certificate_refused"

FAMILIES: tuple[type[Reason], ...] = (Drop, HandshakeFailure, Refusal, CertificateFailure)
_BY_PREFIX = {family.prefix: frozenset(r.value for r in family) for family in FAMILIES}


class Counters(Counter[str]):
    """A Counter whose `<prefix>:<reason>` keys must be members of the enumeration."""

    def __setitem__(self, key: str, value: int) -> None:
        prefix, colon, reason = key.partition(":")
        if colon and reason not in _BY_PREFIX.get(prefix, ()):
            raise KeyError(f"{key!r} is not a reason of ringmesh.reasons")
        super().__setitem__(key, value)
