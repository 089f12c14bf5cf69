"""Mailboxes at a home relay: packets held in memory for a recipient, handed to its session.

Anyone with a session can deliver to any mailbox id, so the store has global caps as well
as the per-mailbox one: how many mailboxes hold packets and how many bytes they hold in all.
A claim by a live session needs no room (its packets are handed over, not held), so a flood
of deliveries to random ids cannot keep a connected user from its mailbox; a session owns at
most MAX_CLAIMS mailboxes (a client claims two: its user mailbox and its reply token's), so
claims are bounded by the link's session limit.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

from .link import Session
from .reasons import Drop

# What holding costs beyond the items' bytes (CPython, 64-bit, measured with tracemalloc):
# per item the bytes object's header, the (expires, item) tuple, its float and the deque
# slot; per mailbox that holds any, the Mailbox, its deque block, the id and the dict entry.
ITEM_OVERHEAD = 128
BOX_OVERHEAD = 1024
MAX_CLAIMS = 4  # per session; a further claim releases the session's oldest
OWNER_LIVE = 12.0  # a connected client talks at least every 5 s; silent longer: hold packets


@dataclass(slots=True)
class Mailbox:
    items: deque[tuple[float, bytes]] = field(default_factory=deque)  # (expires, item)
    owner: Session | None = None
    owner_expires: float = 0.0


class MailboxStore:
    """Nothing here is ever written to disk or logged; items expire after `ttl` seconds."""

    def __init__(
        self,
        ttl: float,
        max_items: int,
        counters: Counter[str],
        max_mailboxes: int,
        max_bytes: int,
    ) -> None:
        self.ttl = ttl
        self.max_items = max_items
        self.max_mailboxes = max_mailboxes
        self.max_bytes = max_bytes
        self.counters = counters
        self.boxes: dict[bytes, Mailbox] = {}
        self.claims: dict[Session, deque[bytes]] = {}
        self.holding = 0  # mailboxes with items held
        self.bytes = 0  # held items and the mailboxes holding them, overheads included

    def deliver(self, mailbox_id: bytes, item: bytes, now: float) -> Session | None:
        """The live session to push item to now, or None when it was held (or dropped)."""
        box = self.boxes.get(mailbox_id)
        if box is not None:
            owner = box.owner
            if owner is not None and box.owner_expires > now and now - owner.last_recv < OWNER_LIVE:
                self.counters["mailbox_handed_over"] += 1
                return owner
            if len(box.items) >= self.max_items:
                self.counters[Drop.MAILBOX_FULL.counter] += 1
                return None
        starts = box is None or not box.items
        cost = len(item) + ITEM_OVERHEAD + (BOX_OVERHEAD if starts else 0)
        if self.bytes + cost > self.max_bytes:
            self.counters[Drop.MAILBOX_BYTES_FULL.counter] += 1
            return None
        if starts and self.holding >= self.max_mailboxes:
            self.counters[Drop.MAILBOXES_FULL.counter] += 1
            return None
        if box is None:
            box = self.boxes[mailbox_id] = Mailbox()
        if starts:
            self.holding += 1
        box.items.append((now + self.ttl, item))
        self.bytes += cost
        self.counters["mailbox_stored"] += 1
        return None

    def claim(self, mailbox_id: bytes, session: Session, now: float) -> list[bytes]:
        """Make session the owner; returns the items held so far."""
        claims = self.claims.setdefault(session, deque())
        if mailbox_id in claims:
            claims.remove(mailbox_id)
        elif len(claims) >= MAX_CLAIMS:
            self._disown(claims.popleft(), session)
        claims.append(mailbox_id)
        box = self.boxes.setdefault(mailbox_id, Mailbox())
        box.owner = session
        box.owner_expires = now + self.ttl
        held = [item for expires, item in box.items if expires > now]
        self._empty(box)
        self.counters["mailbox_handed_over"] += len(held)
        return held

    def _empty(self, box: Mailbox) -> None:
        if box.items:
            self.holding -= 1
            self.bytes -= BOX_OVERHEAD + sum(len(item) + ITEM_OVERHEAD for _, item in box.items)
            box.items.clear()

    def _disown(self, mailbox_id: bytes, session: Session) -> None:
        box = self.boxes.get(mailbox_id)
        if box is not None and box.owner is session:
            box.owner = None
            if not box.items:
                del self.boxes[mailbox_id]

    def release(self, session: Session) -> None:
        for mailbox_id in self.claims.pop(session, ()):
            self._disown(mailbox_id, session)

    def expire(self, now: float, live: dict[bytes, Session]) -> None:
        """Drop expired items and owners whose session is gone; forget empty mailboxes."""
        for session in [s for s in self.claims if s.local_sid not in live]:
            self.release(session)
        for mailbox_id, box in list(self.boxes.items()):
            while box.items and box.items[0][0] <= now:
                _, item = box.items.popleft()
                self.bytes -= len(item) + ITEM_OVERHEAD
                self.counters[Drop.MAILBOX_EXPIRED.counter] += 1
                if not box.items:
                    self.holding -= 1
                    self.bytes -= BOX_OVERHEAD
            if box.owner is not None and (
                box.owner_expires <= now or box.owner.local_sid not in live
            ):
                box.owner = None
            if not box.items and box.owner is None:
                del self.boxes[mailbox_id]

    def depth(self) -> int:
        return sum(len(b.items) for b in self.boxes.values())

    def __len__(self) -> int:
        return len(self.boxes)
