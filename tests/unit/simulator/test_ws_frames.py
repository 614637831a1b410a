"""The simulator's raw WebSocket frame builder, read back by websockets' own frame parser."""

from __future__ import annotations

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from simulator.frames import ws_text_frames


def _parse_all(data: bytes) -> list[Frame]:
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    frames: list[Frame] = []
    while reader.buffer:  # (at_eof is a generator-based coroutine in websockets)
        parser = Frame.parse(reader.read_exact, mask=False)
        try:
            next(parser)
        except StopIteration as done:
            frames.append(done.value)
        else:  # pragma: no cover - the parser wanted more bytes than we gave it
            pytest.fail("incomplete frame")
    return frames


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_every_length_encoding_round_trips(size: int) -> None:
    """7-bit, 16-bit and 64-bit lengths, at and around each boundary."""
    payload = bytes(i % 251 for i in range(size))
    (frame,) = _parse_all(ws_text_frames([payload]))
    assert frame.opcode is Opcode.TEXT
    assert frame.fin
    assert frame.data == payload


def test_many_frames_join_in_order() -> None:
    """A batch is the frames back to back, in order."""
    payloads = [b'{"n":%d}' % i for i in range(1000)] + [b"x" * 300, b""]
    frames = _parse_all(ws_text_frames(payloads))
    assert [f.data for f in frames] == payloads


def test_issue11_six_decimal_and_subunit_frames() -> None:
    """The simulator's 6-decimal frames parse to the 4-decimal record; sub-unit ones dead-letter."""
    import orjson as _orjson

    from kalshi_data.kalshi.fixedpoint import SUBUNIT_REASON
    from kalshi_data.kalshi.parse import DeadLetter, parse_frame
    from simulator import frames as _frames

    msg = {
        "trade_id": "6a0c1b5e-8f4e-4c1a-9b7e-2d3f4a5b6c7d",
        "market_ticker": "KXA-1",
        "yes_price_dollars": "0.4100",
        "no_price_dollars": "0.5900",
        "count_fp": "1.00",
        "ts_ms": 1_767_225_600_000,
    }
    plain = parse_frame(_frames.data_frame("trade", 1, 1, _orjson.dumps(msg)))
    wide = _frames.malformed("six_decimals", "trade", 1, 1, msg)
    assert b'"0.410000"' in wide
    assert parse_frame(wide) == plain
    bad = parse_frame(_frames.malformed("subunit_price", "trade", 1, 1, msg))
    assert isinstance(bad, DeadLetter)
    assert SUBUNIT_REASON in bad.reason
