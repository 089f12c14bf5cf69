"""Mailboxes at a home relay: packets held in memory for a recipient, handed to its session."""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

from .link import Session
from .reasons import Drop, dropped

MAX_MAILBOXES = 100_000
OWNER_LIVE = 12.0  # a connected client talks at least every 5 s; silent longer: hold packets


@dataclass
class Mailbox:
    items: deque[tuple[float, bytes]] = field(default_factory=deque)  # (expires, item)
    owner: Session | None = None
    owner_expires: float = 0.0


class MailboxStore:
    """Nothing here is ever written to disk or logged; items expire after `ttl` seconds."""

    def __init__(self, ttl: float, max_items: int, counters: Counter[str]) -> None:
        self.ttl = ttl
        self.max_items = max_items
        self.counters = counters
        self.boxes: dict[bytes, Mailbox] = {}

    def _box(self, mailbox_id: bytes) -> Mailbox | None:
        box = self.boxes.get(mailbox_id)
        if box is None:
            if len(self.boxes) >= MAX_MAILBOXES:
                self.counters[dropped(Drop.MAILBOX_FULL)] += 1
                return None
            box = self.boxes[mailbox_id] = Mailbox()
        return box

    def deliver(self, mailbox_id: bytes, item: bytes, now: float) -> Session | None:
        """The live session to push item to now, or None when it was held (or dropped)."""
        box = self._box(mailbox_id)
        if box is None:
            return None
        owner = box.owner
        if owner is not None and box.owner_expires > now and now - owner.last_recv < OWNER_LIVE:
            self.counters["mailbox_handed_over"] += 1
            return owner
        if len(box.items) >= self.max_items:
            self.counters[dropped(Drop.MAILBOX_FULL)] += 1
            return None
        box.items.append((now + self.ttl, item))
        self.counters["mailbox_stored"] += 1
        return None

    def claim(self, mailbox_id: bytes, session: Session, now: float) -> list[bytes] | None:
        """Make session the owner; returns the items held so far (None: no room for a box)."""
        box = self._box(mailbox_id)
        if box is None:
            return None
        box.owner = session
        box.owner_expires = now + self.ttl
        held = [item for expires, item in box.items if expires > now]
        box.items.clear()
        self.counters["mailbox_handed_over"] += len(held)
        return held

    def release(self, session: Session) -> None:
        for box in self.boxes.values():
            if box.owner is session:
                box.owner = None

    def expire(self, now: float, live: dict[bytes, Session]) -> None:
        """Drop expired items and owners whose session is gone; forget empty mailboxes."""
        for mailbox_id, box in list(self.boxes.items()):
            while box.items and box.items[0][0] <= now:
                box.items.popleft()
                self.counters[dropped(Drop.MAILBOX_EXPIRED)] += 1
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
