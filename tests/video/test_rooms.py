from __future__ import annotations

import pytest

from video.rooms import MAX_PARTICIPANTS, Participant, Role, Room, RoomError, State

HOST = Participant("h", "Dr. Weber", Role.HOST)
GUEST = Participant("g", "Erika", Role.GUEST)


def _room() -> Room:
    room = Room("a1")
    assert room.join(HOST) is True
    assert room.join(GUEST) is False
    return room


def test_guest_waits_until_the_host_admits() -> None:
    room = _room()
    assert room.state is State.ACTIVE
    assert room.waiting == ["g"]
    with pytest.raises(RoomError) as refused:
        room.check_peer("g", "h")
    assert refused.value.code == "forbidden"
    assert room.admit("h", "g") == GUEST
    room.check_peer("g", "h")
    assert [p["state"] for p in room.roster()] == ["in-call", "in-call"]


def test_only_the_host_admits_and_ends() -> None:
    room = _room()
    room.join(Participant("s", "Station", Role.STATION))
    room.admit("h", "g")
    for act in (lambda: room.admit("g", "s"), lambda: room.end("g")):
        with pytest.raises(RoomError) as refused:
            act()
        assert refused.value.code == "forbidden"
    with pytest.raises(RoomError) as unknown:
        room.admit("h", "nobody")
    assert unknown.value.code == "unknown-peer"


def test_full_room_refuses_and_ended_room_refuses_joins() -> None:
    room = _room()
    for n in range(MAX_PARTICIPANTS - 2):
        room.join(Participant(f"x{n}", "X", Role.GUEST))
    with pytest.raises(RoomError) as full:
        room.join(Participant("late", "Late", Role.GUEST))
    assert full.value.code == "room-full"
    assert {p.id for p in room.end("h")} == {"h", "g", "x0", "x1"}
    with pytest.raises(RoomError) as ended:
        room.join(Participant("h2", "Dr. Weber", Role.HOST))
    assert ended.value.code == "room-ended"


def test_leave_and_json_round_trip() -> None:
    room = _room()
    room.admit("h", "g")
    assert room.leave("h") == HOST
    assert room.leave("h") is None
    assert room.state is State.ACTIVE  # the guest is still in the call
    copy = Room.from_json(room.to_json())
    assert copy == room
    assert copy.peers("g") == []
