"""Fuzzing: WebSocket frames, REST bodies and config files, generated and mutated.

``python -m bench.fuzz [--inputs N] [--seed S] [--target ws|rest|config]`` (also run by the
``chaos`` test ``tests/chaos/test_fuzz.py``; figures in ``docs/reliability.md``).

Each target starts from a corpus of well-formed inputs made by the simulator from ``--seed``
(frames of every type, control replies and errors, REST market/event/series/trade/order-book
objects, the example config files) plus a few hand-written hostile seeds (deep nesting, huge
numbers, YAML alias bombs). Every input is then either *mutated* from a corpus entry (bytes
flipped, inserted, deleted, duplicated, spliced; JSON leaves replaced by hostile values; keys
renamed, removed, added; the result re-serialised) or *generated* by hypothesis (derandomised,
so a seed gives the same inputs). The checks:

- ``ws``: ``parse_frame`` returns a record, a control ``Frame`` or a ``DeadLetter`` with a
  non-empty reason, never raises; the same bytes through ``WsProtocol.feed`` (a long-lived
  instance with live subscriptions, so seq tracking runs too) and the gatherer's ``Ingest``
  never raise, every row has its table's column count, and every input ``parse_frame`` rejected
  left a ``dead_letters`` row with a reason (unless ``feed`` dropped it as a duplicate seq).
- ``rest``: the REST error-body reader and every typed REST parser (markets, events, series,
  trades, order books) return a record or a ``DeadLetter`` with a reason, never raise.
- ``config``: the gatherer, deduplicator and export loaders either build a config or raise
  ``ConfigError`` whose key is set (a mutated key's path or a parent of it when the mutation
  was structural); any other exception is a crash. Secrets' values never appear in the message.

A crash prints the input (repr, truncated) and is counted; the run exits 1 when any occurred.
"""

from __future__ import annotations

import argparse
import copy
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml

#: Hostile leaf values a JSON mutation puts in place of a field.
HOSTILE: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    1,
    2**31,
    2**63 - 1,
    2**63,
    -(2**63) - 1,
    2**64,
    10**30,
    1.5,
    -0.0,
    1e308,
    "",
    " ",
    "0",
    "-1",
    "1.0000",
    "1.00001",
    "0.4200",
    "-0.0001",
    "NaN",
    "Infinity",
    "1e5",
    "٣",
    "0x10",
    "1_000",
    "\x00",
    "\u2028",
    "a" * 1000,
    "A" * 129,
    "yes",
    "no",
    "maybe",
    "00000000-0000-0000-0000-000000000000",
    "{00000000-0000-0000-0000-000000000000}",
    "not-a-uuid",
    "2026-01-01T00:00:00Z",
    "2026-13-45T25:61:61Z",
    "9999-12-31T23:59:59.999999Z",
    [],
    {},
    [[]],
    [["0.5000", "1.00"]],
    [["0.5000", "1.00"], ["0.5000", "2.00"]],
    [["1.5000", "1.00"]],
    [["0.5000"]],
    [None],
    {"a": 1},
    [1] * 50,
]


@dataclass
class Stats:
    """Counts for one target."""

    target: str
    inputs: int = 0
    mutated: int = 0
    generated: int = 0
    accepted: int = 0
    rejected: int = 0
    crashes: int = 0
    corpus: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    crash_samples: list[str] = field(default_factory=list)
    elsewhere: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def crash(self, data: object, exc: BaseException | str) -> None:
        """Record one crash (an exception, or a failed check described by ``exc``)."""
        self.crashes += 1
        if len(self.crash_samples) < 10:
            what = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
            self.crash_samples.append(f"{what} <- {repr(data)[:300]}")

    def line(self) -> str:
        """One summary line."""
        top = ", ".join(f"{r} {n}" for r, n in self.reasons.most_common(4))
        return (
            f"{self.target}: {self.inputs:,} inputs ({self.mutated:,} mutated, "
            f"{self.generated:,} generated; corpus {self.corpus}) in {self.seconds:.1f} s: "
            f"accepted {self.accepted:,}, rejected {self.rejected:,}, crashes {self.crashes}"
            f" | top reasons: {top}"
        )


# ------------------------------------------------------------------------------ mutation
def _mutate_bytes(rng: random.Random, data: bytes, corpus: list[bytes]) -> bytes:
    """One to four byte-level edits (AFL-style havoc, without coverage feedback)."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(9)
        n = len(buf)
        if op == 0 and n:  # bit flip
            i = rng.randrange(n)
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and n:  # interesting byte
            buf[rng.randrange(n)] = rng.choice(b'\x00\xff"{}[]:,\\-.0e9 \n')
        elif op == 2:  # insert random bytes
            i = rng.randint(0, n)
            buf[i:i] = rng.randbytes(rng.randint(1, 8))
        elif op == 3 and n:  # delete a range
            i = rng.randrange(n)
            del buf[i : i + rng.randint(1, 16)]
        elif op == 4 and n:  # duplicate a range
            i = rng.randrange(n)
            j = min(n, i + rng.randint(1, 32))
            buf[j:j] = buf[i:j]
        elif op == 5 and n:  # truncate
            del buf[rng.randrange(n) :]
        elif op == 6:  # splice with another corpus entry
            other = rng.choice(corpus)
            i = rng.randint(0, n)
            j = rng.randint(0, len(other))
            buf = buf[:i] + bytearray(other[j:])
        elif op == 7 and n:  # replace a digit run with a big number
            i = rng.randrange(n)
            buf[i:i] = str(rng.choice([2**63, 10**20, -1, 0, 99999999999999])).encode()
        elif op == 8 and n:  # swap a quote for a backslash escape
            i = rng.randrange(n)
            buf[i:i] = rng.choice([b"\\u0000", b"\\ud800", b'\\"', b"\xc3", b"\xf0\x9f"])
    return bytes(buf)


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path to a value inside nested dicts and lists (the root included)."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, (*prefix, i))


def _get(obj: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        obj = obj[p]
    return obj


def mutate_structure(
    rng: random.Random, obj: Any, hostile: list[Any]
) -> tuple[Any, tuple[Any, ...]]:
    """A deep copy of ``obj`` with one structural edit; returns it and the edited path."""
    out = copy.deepcopy(obj)
    paths = list(_paths(out))
    path = rng.choice(paths)
    if not path:
        return rng.choice(hostile), path
    parent = _get(out, path[:-1])
    key = path[-1]
    op = rng.randrange(6)
    if op <= 2:  # replace the value
        parent[key] = copy.deepcopy(rng.choice(hostile))
    elif op == 3:  # delete it
        del parent[key]
    elif op == 4 and isinstance(parent, dict):  # rename the key (a typo or a wrong case)
        value = parent.pop(key)
        new = rng.choice([f"{key}_", str(key).upper(), f"x{key}", str(key)[:-1] or "k"])
        parent[new] = value
        path = (*path[:-1], new)
    elif isinstance(parent, dict):  # add an unknown key next to it
        new = f"unknown_{rng.randrange(100)}"
        parent[new] = rng.choice(hostile)
        path = (*path[:-1], new)
    else:  # a list: duplicate an item
        parent.insert(key, copy.deepcopy(parent[key]))
    return out, path


# --------------------------------------------------------------------------------- corpus
def _exchange_corpus(seed: int) -> tuple[list[tuple[str, dict[str, Any]]], Any]:
    """(type, msg) events of a small seeded exchange, every type, plus the exchange."""
    from simulator.market import Exchange  # noqa: PLC0415

    ex = Exchange(seed, 40, 1_790_000_000, lifecycle_share=0.05)
    out: list[Any] = []
    now_ms = 1_790_000_000_000
    while len(out) < 3000:
        ex.step(now_ms, out)
        now_ms += 1
    events = [(t, msg) for t, _ticker, msg in out]
    return events, ex


def ws_corpus(seed: int) -> list[bytes]:
    """Frames of every data type, control replies, errors and hostile hand-written seeds."""
    from simulator import frames, shapes  # noqa: PLC0415

    events, ex = _exchange_corpus(seed)
    by_type: dict[str, list[dict[str, Any]]] = {}
    for t, msg in events:
        by_type.setdefault(t, []).append(msg)
    out: list[bytes] = []
    rng = random.Random(seed)
    for t, msgs in sorted(by_type.items()):
        for msg in rng.sample(msgs, min(20, len(msgs))):
            seq = None if t == "ticker" else rng.randint(1, 5)
            out.append(frames.data_frame(t, rng.randint(1, 4), seq, orjson.dumps(msg)))
    for m in ex.market_list[:10]:
        out.append(
            frames.data_frame("orderbook_snapshot", 1, 1, orjson.dumps(shapes.snapshot_msg(m)))
        )
    for code in (*frames.ERRORS, 18, 27):
        out.append(frames.error(code, rng.randint(0, 5), sid=rng.choice([None, 1, 2])))
    for sid, channel in (
        (1, "orderbook_delta"),
        (2, "trade"),
        (3, "ticker"),
        (4, "market_lifecycle_v2"),
    ):
        out.append(frames.reply("subscribed", sid, msg={"channel": channel, "sid": sid}))
    out.append(frames.reply("ok", 5, sid=1, seq=3, msg={"market_tickers": ["A-B", "C-D"]}))
    out.append(frames.reply("ok", 6, msg=[{"sid": 1, "channel": "trade"}]))
    out.append(frames.reply("unsubscribed", 7, sid=2, seq=9))
    for kind in frames.MALFORMED_KINDS:
        m = ex.market_list[0]
        out.append(
            frames.malformed(
                kind, "orderbook_delta", 1, 2, shapes.delta_msg(m, "yes", m.tick, 100, 1)
            )
        )
    out += [
        b"[" * 2000 + b"]" * 2000,
        b'{"type":"orderbook_delta","sid":1,"seq":1,"msg":' + b'{"a":' * 1100 + b"1" + b"}" * 1101,
        b'{"type":"trade","sid":1,"seq":1e400,"msg":{}}',
        b'{"type":"trade","sid":true,"seq":1,"msg":{}}',
        b'{"type":"orderbook_delta","sid":1,"seq":18446744073709551616,"msg":{}}',
        b"\xef\xbb\xbf{}",
        b"",
        b"null",
        b'"string"',
    ]
    return out


def rest_corpus(seed: int) -> list[tuple[str, Any]]:
    """(kind, JSON value) pairs: REST objects the simulator serves, and error bodies."""
    from simulator import shapes  # noqa: PLC0415

    _events, ex = _exchange_corpus(seed)
    out: list[tuple[str, Any]] = []
    for m in ex.market_list[:15]:
        out.append(("market", shapes.market_obj(m)))
        snap = shapes.snapshot_msg(m)
        out.append(
            (
                "orderbook",
                {
                    "yes_dollars": snap.get("yes_dollars_fp", []),
                    "no_dollars": snap.get("no_dollars_fp", []),
                },
            )
        )
        out.append(("orderbook", {k: v for k, v in snap.items() if k != "market_ticker"}))
    for ev in ex.event_list[:10]:
        out.append(("event", shapes.event_obj(ev)))
    for s in list(ex.series.values())[:10]:
        out.append(("series", shapes.series_obj(s)))
    for tr in list(ex.trades)[:15]:
        out.append(("trade", _rest_trade(tr)))
    out += [
        ("error", {"error": {"code": "too_many_requests", "message": "slow down"}}),
        ("error", {"error": "internal"}),
        ("error", {"code": 5}),
    ]
    return out


def _rest_trade(tr: Any) -> dict[str, Any]:
    from simulator.rest import trade_obj  # noqa: PLC0415

    return trade_obj(tr.msg, tr.created_us)


# --------------------------------------------------------------------------------- ws
def run_ws(n: int, seed: int, generated_share: float = 0.1) -> Stats:
    """Frames through parse_frame, WsProtocol.feed and Ingest."""
    from gatherer.ingest import Ingest  # noqa: PLC0415
    from kalshi_data.kalshi.parse import DeadLetter, Frame, parse_frame  # noqa: PLC0415
    from kalshi_data.kalshi.wsproto import Data, Duplicate, WsProtocol  # noqa: PLC0415
    from kalshi_data.records import Record  # noqa: PLC0415
    from kalshi_data.tables import BY_NAME  # noqa: PLC0415

    st = Stats("ws")
    corpus = ws_corpus(seed)
    st.corpus = len(corpus)
    json_corpus = [orjson.loads(c) for c in corpus if _is_json(c)]
    rng = random.Random(seed)
    rows: list[tuple[str, tuple[Any, ...]]] = []
    ingest = Ingest(lambda table, row: rows.append((table, row)))
    proto = WsProtocol()
    setup = [c for c in corpus if b'"subscribed"' in c]
    gen = _hypothesis_frames(seed)
    started = time.perf_counter()
    for i in range(n):
        if i % 5000 == 0:  # a fresh connection now and then: seqs start over
            proto.reset()
            for s in setup:
                proto.feed(s)
        if rng.random() < generated_share:
            data = next(gen)
            st.generated += 1
        elif rng.random() < 0.5:
            data = _mutate_bytes(rng, rng.choice(corpus), corpus)
            st.mutated += 1
        else:
            obj, _ = mutate_structure(rng, rng.choice(json_corpus), HOSTILE)
            data = orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS) if _dumpable(obj) else b"{"
            st.mutated += 1
        st.inputs += 1
        try:
            rec: Any = parse_frame(data)  # Any: the checks below distrust the annotation
            if isinstance(rec, DeadLetter):
                if not rec.reason:
                    st.crash(data, "dead letter without a reason")
                st.rejected += 1
                st.reasons[rec.reason.split(":")[0][:40]] += 1
            elif not isinstance(rec, Frame | Record):
                st.crash(data, f"parse_frame returned {type(rec).__name__}")
            else:
                st.accepted += 1
            rows.clear()
            events = proto.feed(data)
            duplicate = False
            for ev in events:
                if isinstance(ev, Data):
                    ingest.record(ev.record, ev.type, 1_790_000_000_000_000)
                elif isinstance(ev, DeadLetter):
                    ingest.dead_letter(ev.reason, ev.raw, "ws", 1_790_000_000_000_000)
                elif isinstance(ev, Duplicate):
                    duplicate = True
            for table, row in rows:
                if len(row) != len(BY_NAME[table].column_names):
                    st.crash(data, f"{table} row has {len(row)} columns")
            if isinstance(rec, DeadLetter) and not duplicate:
                letters = [r for t, r in rows if t == "dead_letters"]
                if not letters or not all(r[2] for r in letters):
                    st.crash(data, "rejected input left no dead letter with a reason")
        except Exception as exc:
            st.crash(data, exc)
    st.seconds = time.perf_counter() - started
    return st


def _is_json(data: bytes) -> bool:
    try:
        orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return True


def _dumpable(obj: Any) -> bool:
    try:
        orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:
        return False
    return True


def _hypothesis_frames(seed: int) -> Iterator[bytes]:
    """An endless, seeded stream of frame-shaped inputs drawn by hypothesis strategies."""
    from hypothesis import strategies as st  # noqa: PLC0415

    leaves = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=False),
        st.text(max_size=20),
        st.sampled_from([h for h in HOSTILE if not isinstance(h, list | dict)]),
    )
    values = st.recursive(
        leaves,
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
        max_leaves=12,
    )
    types = st.sampled_from(
        [
            "orderbook_delta",
            "orderbook_snapshot",
            "trade",
            "ticker",
            "market_lifecycle_v2",
            "event_lifecycle",
            "event_fee_update",
            "subscribed",
            "ok",
            "error",
            "unsubscribed",
            "x",
        ]
    )
    fields = [
        "market_ticker",
        "market_id",
        "price_dollars",
        "delta_fp",
        "side",
        "ts_ms",
        "ts",
        "yes_dollars_fp",
        "no_dollars_fp",
        "trade_id",
        "count_fp",
        "yes_price_dollars",
        "no_price_dollars",
        "taker_side",
        "event_type",
        "event_ticker",
        "code",
        "msg",
        "sid",
        "channel",
        "market_tickers",
    ]
    msgs = st.dictionaries(st.sampled_from(fields), values, max_size=8)
    frame = st.fixed_dictionaries(
        {"type": types, "msg": st.one_of(msgs, values)},
        optional={
            "sid": st.one_of(st.integers(-2, 6), values),
            "seq": st.one_of(st.integers(-2, 50), values),
            "id": st.one_of(st.integers(0, 10), values),
        },
    )
    blob = st.one_of(
        frame.map(lambda f: orjson.dumps(f, option=orjson.OPT_NON_STR_KEYS)),
        st.binary(max_size=200),
        st.text(max_size=200).map(str.encode),
    )
    return _draw_forever(blob, seed)


def _draw_forever(strategy: Any, seed: int) -> Iterator[Any]:
    """Examples of a hypothesis strategy from a seeded random source, one at a time."""
    from hypothesis.errors import HypothesisException  # noqa: PLC0415
    from hypothesis.internal.conjecture.data import ConjectureData  # noqa: PLC0415

    rng = random.Random(seed)
    while True:
        data = ConjectureData(random=rng, max_choices=10_000)
        try:
            yield data.draw(strategy)
        except (HypothesisException, Exception):  # an overrun draw: try the next seed
            continue


# --------------------------------------------------------------------------------- rest
def run_rest(n: int, seed: int, generated_share: float = 0.1) -> Stats:
    """REST JSON bodies through the error reader and every typed parser."""
    from kalshi_data.kalshi import rest  # noqa: PLC0415
    from kalshi_data.kalshi.parse import (  # noqa: PLC0415
        DeadLetter,
        event_from_rest,
        market_from_rest,
        orderbook_from_rest,
        series_from_rest,
        trade_from_rest,
    )
    from kalshi_data.records import Record  # noqa: PLC0415

    parsers: dict[str, Callable[[Any], Any]] = {
        "market": market_from_rest,
        "event": event_from_rest,
        "series": series_from_rest,
        "trade": trade_from_rest,
        "orderbook": lambda obj: orderbook_from_rest("KX-FUZZ", obj),
    }
    st = Stats("rest")
    corpus = rest_corpus(seed)
    st.corpus = len(corpus)
    raw_corpus = [orjson.dumps(v) for _, v in corpus]
    rng = random.Random(seed)
    gen = _draw_forever(_hypothesis_json(), seed)
    started = time.perf_counter()
    for _ in range(n):
        kind, obj = rng.choice(corpus)
        r = rng.random()
        if r < generated_share:
            obj = next(gen)
            body = orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS) if _dumpable(obj) else b"["
            st.generated += 1
        elif r < 0.55:
            obj, _ = mutate_structure(rng, obj, HOSTILE)
            body = orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS) if _dumpable(obj) else b"{"
            st.mutated += 1
        else:
            body = _mutate_bytes(rng, orjson.dumps(obj), raw_corpus)
            try:
                obj = orjson.loads(body)
            except orjson.JSONDecodeError:
                obj = None
            st.mutated += 1
        st.inputs += 1
        try:
            code: Any
            msg: Any
            code, msg = rest._error_code(body)
            if not isinstance(code, str) or not isinstance(msg, str):
                st.crash(body, "error reader returned non-strings")
            err: Any = rest._status_error(rng.choice([400, 404, 429, 500, 503]), "/x", body)
            if not isinstance(err, rest.RestError):
                st.crash(body, "status error is not a RestError")
            targets = list(parsers) if kind == "error" else [kind]
            for t in targets:
                out = parsers[t](obj)
                if isinstance(out, DeadLetter):
                    if not out.reason:
                        st.crash(body, f"{t}: dead letter without a reason")
                    st.rejected += 1
                    st.reasons[f"{t}: {out.reason.split(':')[0][:30]}"] += 1
                elif isinstance(out, Record):
                    st.accepted += 1
                else:
                    st.crash(body, f"{t} returned {type(out).__name__}")
        except Exception as exc:
            st.crash(body, exc)
    st.seconds = time.perf_counter() - started
    return st


def _hypothesis_json() -> Any:
    from hypothesis import strategies as st  # noqa: PLC0415

    leaves = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=30),
        st.sampled_from([h for h in HOSTILE if isinstance(h, str)]),
    )
    keys = st.sampled_from(
        [
            "ticker",
            "event_ticker",
            "series_ticker",
            "status",
            "yes_bid_dollars",
            "open_time",
            "close_time",
            "trade_id",
            "count_fp",
            "created_time",
            "yes_dollars",
            "no_dollars",
            "title",
            "market_type",
            "rules_primary",
            "x",
        ]
    )
    return st.recursive(
        leaves,
        lambda c: st.lists(c, max_size=4) | st.dictionaries(keys, c, max_size=8),
        max_leaves=20,
    )


# ------------------------------------------------------------------------------- config
_SECRET_VALUE = "s3cr3t-value-never-in-messages"


def _config_corpus(tmp: Path) -> list[tuple[str, Any]]:
    """(loader, config mapping) from the example files, secrets pointed at real temp files."""
    root = Path(__file__).resolve().parent.parent / "examples"
    secret = tmp / "secret"
    secret.write_text(_SECRET_VALUE)
    key = tmp / "key.pem"
    key.write_text("not a key")
    out = []
    for loader, name in (
        ("gatherer", "gatherer.yaml"),
        ("dedup", "dedup.yaml"),
        ("export", "export.yaml"),
    ):
        text = (root / name).read_text()
        data = yaml.safe_load(text)
        out.append((loader, _point_files(data, secret)))
    return out


def _point_files(obj: Any, secret: Path) -> Any:
    if isinstance(obj, dict):
        return {k: _point_files(v, secret) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_point_files(v, secret) for v in obj]
    if isinstance(obj, str) and obj.startswith("file:"):
        return f"file:{secret}"
    return obj


HOSTILE_YAML = [
    "a: &a [1,2]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
    "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n"
    "f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\ng: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\n"
    "h: [*g,*g,*g,*g,*g,*g,*g,*g,*g]\n",
    "x: " + "[" * 5000 + "]" * 5000 + "\n",
    "x: " + "{a: " * 3000 + "1" + "}" * 3000 + "\n",
    "!!python/object/apply:os.system ['true']\n",
    "a: !!binary AAAA\n",
    "a: !!timestamp 2001-12-14\n",
    "? [1, 2]\n: 3\n",
    "1: 2\n",
    "null: 1\n",
    "- a\n- b\n",
    "a: 1\na: 2\n",
    "\t\x00\n",
    "%YAML 1.3\n---\na: 1\n",
    "a: *undefined\n",
    "--- a\n--- b\n",
    "gatherer_id: .inf\n",
    "instance_id: 1e400\npoll_interval_s: .nan\n",
]


def run_config(n: int, seed: int) -> Stats:
    """Config files through the one config loader (gatherer, dedup, export schemas)."""
    from deduplicator.config import DedupConfig  # noqa: PLC0415
    from deduplicator.config import load as load_dedup  # noqa: PLC0415
    from gatherer.config import GathererConfig  # noqa: PLC0415
    from gatherer.config import load as load_gatherer  # noqa: PLC0415
    from kalshi_data.config import load_config  # noqa: PLC0415
    from kalshi_data.errors import ConfigError  # noqa: PLC0415
    from kalshi_data.tools.export import ExportConfig  # noqa: PLC0415

    loaders: dict[str, Callable[[Path], Any]] = {
        "gatherer": lambda p: load_gatherer(p, env={}),
        "dedup": load_dedup,
        "export": lambda p: load_config(ExportConfig, p, env={}),
    }
    classes: dict[str, type[Any]] = {
        "gatherer": GathererConfig,
        "dedup": DedupConfig,
        "export": ExportConfig,
    }
    st = Stats("config")
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="kd-fuzz-") as td:
        tmp = Path(td)
        corpus = _config_corpus(tmp)
        texts = [yaml.safe_dump(d, sort_keys=False).encode() for _, d in corpus]
        st.corpus = len(corpus) + len(HOSTILE_YAML)
        path = tmp / "config.yaml"
        hostile = [
            *HOSTILE,
            f"file:{tmp / 'missing'}",
            "file:",
            "secretsmanager:",
            "127.0.0.1:0",
            "[::1]:99999",
        ]
        started = time.perf_counter()
        for i in range(n):
            loader, data = rng.choice(corpus)
            edited: tuple[Any, ...] | None = None
            text: Any
            r = rng.random()
            if i < len(HOSTILE_YAML):
                text = HOSTILE_YAML[i].encode()
                st.generated += 1
                path.write_bytes(text)
            elif r < 0.8:  # the schema checks: the mapping itself (YAML is slow, ~10 ms a file)
                obj, edited = mutate_structure(rng, data, hostile)
                text = obj
                st.mutated += 1
            else:
                text = _mutate_bytes(rng, rng.choice(texts), texts)
                path.write_bytes(text)
                st.mutated += 1
            st.inputs += 1
            try:
                if isinstance(text, bytes):
                    loaders[loader](path)
                else:
                    load_config(classes[loader], None, data=text, env={})
                st.accepted += 1
            except ConfigError as exc:
                st.rejected += 1
                msg = str(exc)
                if not exc.key:
                    st.crash(text, f"ConfigError without a key: {msg}")
                if _SECRET_VALUE in msg:
                    st.crash(text, f"secret in message: {msg}")
                if edited and not _related(exc.key, edited):
                    st.reasons["key elsewhere"] += 1
                    if len(st.elsewhere) < 5:
                        st.elsewhere.append(f"edited {edited}: {msg}")
                else:
                    st.reasons[exc.key.split(".")[0].split("[")[0][:30]] += 1
            except Exception as exc:
                st.crash(text, exc)
        st.seconds = time.perf_counter() - started
    return st


def _related(key: str, edited: tuple[Any, ...]) -> bool:
    """True when the error's key is the edited path, a parent of it, or the file/root."""
    if key in ("<root>", "<file>"):
        return True
    dotted = ""
    for p in edited:
        dotted = f"{dotted}[{p}]" if isinstance(p, int) else (f"{dotted}.{p}" if dotted else str(p))
        if dotted == key:
            return True
    return key.startswith(dotted) or not edited


TARGETS: dict[str, Callable[[int, int], Stats]] = {
    "ws": run_ws,
    "rest": run_rest,
    "config": run_config,
}


def main(argv: list[str] | None = None) -> int:
    """Run the targets; exit 1 when any input crashed one."""
    p = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__.splitlines()[0])
    p.add_argument("--inputs", type=int, default=100_000, help="inputs per target")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--target", choices=sorted(TARGETS), action="append")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    crashes = 0
    for name in args.target or list(TARGETS):
        stats = TARGETS[name](args.inputs, args.seed)
        print(stats.line(), flush=True)
        for sample in stats.crash_samples:
            print(f"  crash: {sample}", flush=True)
        for sample in stats.elsewhere:
            print(f"  error names another key: {sample}", flush=True)
        crashes += stats.crashes
    return 1 if crashes else 0


if __name__ == "__main__":
    raise SystemExit(main())
