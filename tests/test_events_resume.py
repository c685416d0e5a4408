"""The event hub across a restart of the market: ``EventHub.state()`` → ``EventHub(resume=…)``.

In process, with the fake clock of ``test_events_hub``; the same hand-over through a real server
stopped and started is ``tests/server/test_events_restart.py``.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qubix_jupyter.market.events import EventType
from qubix_jupyter.server_extension.events import EventHub, HubState

from .test_events_hub import PROPERTY, FakeTime, drain, events, make_hub


def _publish(hub: EventHub, channel: str, n: int) -> int:
    seq = hub.publish(channel, EventType.JOB_PROGRESS, {"n": n})
    assert seq is not None
    return seq


async def test_a_client_that_had_everything_resumes_on_the_next_hub_without_resync() -> None:
    time = FakeTime()
    old = make_hub(time)
    for n in range(3):
        _publish(old, "job:a", n)
    position = old.seq  # the client received all of it, then the server stopped
    old.close()
    time.now -= 5  # a clock that went back across the restart changes nothing
    new = make_hub(time, resume=old.state())
    assert new.seq >= position
    for n in range(3, 5):
        _publish(new, "job:a", n)
    sub = new.connect("u1")
    head = await sub.subscribe("job:a", since_seq=position)
    frames = drain(sub)
    assert [f["data"]["n"] for f in events(frames)] == [3, 4]
    assert frames[-1] == {**frames[-1], "type": "SUBSCRIBED", "seq": head}


async def test_frames_still_buffered_before_the_restart_are_replayed_after_it() -> None:
    time = FakeTime()
    old = make_hub(time)
    seqs = [_publish(old, "job:a", n) for n in range(4)]
    _publish(old, "job:b", 99)
    old.close()
    new = make_hub(time, resume=old.state())
    _publish(new, "job:a", 4)
    sub = new.connect("u1")
    await sub.subscribe("job:a", since_seq=seqs[1])
    assert [f["data"]["n"] for f in events(drain(sub))] == [2, 3, 4]
    # the replayed frames are the old process's own text, seq and ts included
    again = new.connect("u1")
    await again.subscribe("job:a", since_seq=seqs[2])
    [old_frame, new_frame] = events(drain(again))
    assert old_frame["seq"] == seqs[3]
    assert new_frame["seq"] > old.seq


async def test_the_next_hub_keeps_at_most_its_buffer_and_older_positions_resync() -> None:
    time = FakeTime()
    old = make_hub(time, buffer_size=10)
    seqs = [_publish(old, "job:a", n) for n in range(10)]
    old.close()
    new = make_hub(time, buffer_size=4, resume=old.state())
    sub = new.connect("u1")
    await sub.subscribe("job:a", since_seq=seqs[5])  # frames 6..9 kept
    assert [f["data"]["n"] for f in events(drain(sub))] == [6, 7, 8, 9]
    late = new.connect("u1")
    await late.subscribe("job:a", since_seq=seqs[4])  # frame 5 was dropped
    [resync, _] = drain(late)
    assert resync["data"] == {"reason": "expired", "since": seqs[4]}


async def test_without_a_state_the_next_hub_asks_old_positions_to_resync() -> None:
    time = FakeTime()
    old = make_hub(time)
    _publish(old, "job:a", 0)
    time.now += 1
    new = make_hub(time)  # the previous process crashed: nothing handed over
    sub = new.connect("u1")
    await sub.subscribe("job:a", since_seq=old.seq)
    assert [f["type"] for f in drain(sub)] == ["RESYNC", "SUBSCRIBED"]


async def test_wallet_frames_are_handed_over_to_their_owner_only() -> None:
    time = FakeTime()
    old = make_hub(time)
    start = old.seq
    old.publish("wallet", EventType.BALANCE_CHANGED, {"balance": 7}, user_id="alice")
    old.publish("wallet", EventType.BALANCE_CHANGED, {"balance": 9}, user_id="bob")
    old.close()
    state = old.state()
    assert json.loads(json.dumps(state.frames)) == [list(f) for f in state.frames]  # storable
    new = make_hub(time, resume=state)
    alice = new.connect("alice")
    await alice.subscribe("wallet", since_seq=start)
    assert [f["data"] for f in events(drain(alice))] == [{"balance": 7}]


def test_a_state_that_breaks_its_rules_is_refused() -> None:
    frame = (5, "marketplace", None, "{}")
    with pytest.raises(ValueError, match="floor"):
        HubState(head=3, floor=4)
    with pytest.raises(ValueError, match="increase"):
        HubState(head=9, floor=5, frames=(frame,))  # not above the floor
    with pytest.raises(ValueError, match="increase"):
        HubState(head=4, floor=1, frames=(frame,))  # above the head
    with pytest.raises(ValueError, match="increase"):
        HubState(head=9, floor=1, frames=(frame, frame))
    assert HubState(head=5, floor=1, frames=(frame,)).frames == (frame,)


@PROPERTY
@given(
    before=st.lists(st.sampled_from(["job:a", "job:b"]), max_size=12),
    after=st.lists(st.sampled_from(["job:a", "job:b"]), max_size=6),
    buffer_size=st.integers(1, 20),
    read=st.integers(0, 12),
)
async def test_resume_across_a_restart_gets_exactly_the_missed_frames_or_one_resync(
    before: list[str], after: list[str], buffer_size: int, read: int
) -> None:
    """A client that read some of job:a's frames before the restart resumes on the next hub and
    receives exactly job:a's frames after its position, old and new, in order; or, when some of
    them left the buffer, one RESYNC."""
    time = FakeTime()
    old = make_hub(time, buffer_size=buffer_size)
    start = old.seq
    published = [(channel, _publish(old, channel, n)) for n, channel in enumerate(before)]
    mine = [seq for channel, seq in published if channel == "job:a"]
    position = mine[min(read, len(mine)) - 1] if mine and read else start
    old.close()
    time.now += 0.5
    new = make_hub(time, buffer_size=buffer_size, resume=old.state())
    published += [(c, _publish(new, c, len(before) + n)) for n, c in enumerate(after)]
    sub = new.connect("u1", max_queue=64)
    await sub.subscribe("job:a", since_seq=position)
    frames = drain(sub)
    expected = [seq for channel, seq in published if channel == "job:a" and seq > position]
    if frames[0]["type"] == "RESYNC":
        # only when a frame after the position (of any channel) left the buffer
        assert len(before) + len(after) > buffer_size
        assert [f["type"] for f in frames] == ["RESYNC", "SUBSCRIBED"]
        assert frames[0]["data"] == {"reason": "expired", "since": position}
        assert any(seq > position for _, seq in published[: len(published) - buffer_size])
    else:
        assert [f["seq"] for f in events(frames)] == expected
