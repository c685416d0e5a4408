"""The event hub's hand-over between two processes of the market.

A market that stops gracefully saves its hub's head seq, floor and buffered frames in
``event_hub_state``; the next one takes them (reads and deletes them in one transaction) as it
starts, so WebSocket clients resume across the restart without RESYNC and are replayed what they
missed. Taking deletes: a state is used once, by the process right after the one that saved it;
after a crash there is none, the new hub starts afresh and resuming clients get a RESYNC.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, String, delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import JSON

from .models import Base, Timestamp, utcnow

#: The one hub of a market's database.
HUB = "market"

#: (seq, channel, wallet owner or None, frame text)
Frame = tuple[int, str, str | None, str]


class EventHubState(Base):
    __tablename__ = "event_hub_state"

    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    head_seq: Mapped[int] = mapped_column(BigInteger)
    floor_seq: Mapped[int] = mapped_column(BigInteger)
    #: [[seq, channel, owner, frame], …] in seq order
    frames: Mapped[list[Any]] = mapped_column(JSON)
    saved_at: Mapped[Timestamp] = mapped_column(default=utcnow, server_default=func.now())


async def save_hub_state(
    sessionmaker: async_sessionmaker[AsyncSession], head: int, floor: int, frames: list[Frame]
) -> None:
    """Save the stopping hub's state, replacing any earlier one."""
    async with sessionmaker() as session, session.begin():
        await session.execute(delete(EventHubState).where(EventHubState.name == HUB))
        session.add(
            EventHubState(
                name=HUB, head_seq=head, floor_seq=floor, frames=[list(f) for f in frames]
            )
        )


async def take_hub_state(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> tuple[int, int, list[Frame]] | None:
    """The saved state (head, floor, frames), deleted as it is read; None if there is none."""
    async with sessionmaker() as session, session.begin():
        row = (
            await session.scalars(
                select(EventHubState).where(EventHubState.name == HUB).with_for_update()
            )
        ).one_or_none()
        if row is None:
            return None
        state = (
            row.head_seq,
            row.floor_seq,
            [(int(seq), str(name), owner, str(frame)) for seq, name, owner, frame in row.frames],
        )
        await session.delete(row)
    return state
