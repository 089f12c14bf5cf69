"""Sizes and type codes shared by every layer. Every datagram on the wire is DATAGRAM_SIZE bytes."""

from __future__ import annotations

DATAGRAM_SIZE = 1400

# Datagram types (first byte on the wire).
DG_HS_INIT = 0x01
DG_HS_COOKIE = 0x02
DG_HS_RESP = 0x03
DG_HS_FINISH = 0x04
DG_DATA = 0x05

SID_LEN = 8
COUNTER_LEN = 8
TAG_LEN = 16
DATA_HEADER_LEN = 1 + SID_LEN + COUNTER_LEN
# Plaintext carried by one DATA datagram: one message-type byte + body.
LINK_PLAINTEXT_LEN = DATAGRAM_SIZE - DATA_HEADER_LEN - TAG_LEN
LINK_BODY_LEN = LINK_PLAINTEXT_LEN - 1

# Link message types (first plaintext byte of a DATA datagram).
MSG_ONION = 0x01
MSG_READY = 0x02
MSG_KEEPALIVE = 0x03
MSG_DESCRIPTOR = 0x04
MSG_GET_DIRECTORY = 0x05
MSG_DIRECTORY = 0x06
MSG_CLAIM_USER = 0x07
MSG_CLAIM_REPLY = 0x08
MSG_MAILBOX_ITEM = 0x09
MSG_MAILBOX_SYNC = 0x0A
MSG_CLOSE = 0x0B
MSG_DIRECTORY_SIG = 0x0C
MSG_PREKEY = 0x0D  # a client publishes its certified prekey bundle to its home relay

# Onion packet geometry (Sphinx-style, fixed number of header slots).
MAX_HOPS = 5
MIN_PATH = 3  # relays on a real message's path: both home relays and at least one between
NODE_ID_LEN = 16
ALPHA_LEN = 32
GAMMA_LEN = 16
DELAY_LEN = 4  # the hop's delay in microseconds, chosen by the sender
SURB_ID_LEN = 16  # DELIVER slots: lets the recipient find the keys of its own reply block
SLOT_LEN = 1 + DELAY_LEN + NODE_ID_LEN + ALPHA_LEN + GAMMA_LEN
MAX_HOP_DELAY_US = 600_000_000  # relays refuse to hold a packet longer than 10 minutes
BETA_LEN = MAX_HOPS * SLOT_LEN
HEADER_LEN = ALPHA_LEN + GAMMA_LEN + BETA_LEN
ONION_LEN = LINK_BODY_LEN
PAYLOAD_LEN = ONION_LEN - HEADER_LEN

# Routing commands inside a header slot.
CMD_FORWARD = 0x01
CMD_DELIVER = 0x02
CMD_DROP = 0x03

ROLE_RELAY = 1
ROLE_CLIENT = 2

assert PAYLOAD_LEN > 900
