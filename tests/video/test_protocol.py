from __future__ import annotations

import json

import pytest

from video.protocol import MAX_FRAME_BYTES, Admit, Hello, ProtocolError, Signal, parse, relayed


def test_hello_and_signals_parse() -> None:
    assert parse('{"type":"hello","room":"a1","token":"t","name":" Erika "}') == Hello(
        "a1", "t", "Erika"
    )
    assert parse('{"type":"admit","participant":"p-1"}') == Admit("p-1")
    offer = parse('{"type":"offer","to":"p-2","sdp":"v=0"}')
    assert offer == Signal("offer", "p-2", {"sdp": "v=0"})
    assert isinstance(offer, Signal)
    assert relayed(offer, "p-1") == {"type": "offer", "from": "p-1", "to": "p-2", "sdp": "v=0"}
    end = parse('{"type":"candidate","to":"p-2","candidate":null}')
    assert end == Signal("candidate", "p-2", {"candidate": None})


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        "[1]",
        '{"type":"teleport"}',
        '{"type":"hello","room":"a1"}',
        '{"type":"offer","to":5,"sdp":"x"}',
        '{"type":"candidate","to":"p","candidate":{"sdpMid":"0"}}',
        '{"type":"candidate","to":"p","candidate":{"candidate":"c","sdpMLineIndex":true}}',
        '{"type":"candidate","to":"p"}',
        b'{"type":"leave"}',
    ],
)
def test_malformed_frames_are_refused(raw: str | bytes) -> None:
    with pytest.raises(ProtocolError) as refused:
        parse(raw)
    assert refused.value.code == "bad-message"
    assert " / " in refused.value.message


def test_frames_over_64_kib_are_refused() -> None:
    frame = json.dumps({"type": "offer", "to": "p", "sdp": "x" * MAX_FRAME_BYTES})
    with pytest.raises(ProtocolError, match="64 KiB"):
        parse(frame)
