"""One exception root per package, no exception name used twice, one error-code table.

Walks every module of the four packages, collects the exception classes each defines, and checks
that each lies under its package's root (the trees are drawn in each ``errors`` module's
docstring). Then drives the simulator's session with the client's protocol core, so a code the
simulator sends is the code, message and class (terminal, retryable) the client sees.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType

import orjson
import pytest

import deduplicator
import gatherer
import kalshi_data
import simulator
from deduplicator.errors import DedupError
from gatherer import subscription
from gatherer.errors import GathererError
from kalshi_data.errors import KalshiDataError
from kalshi_data.kalshi import codes, wsproto
from kalshi_data.kalshi.codes import WsErrorCode
from simulator import frames
from simulator.config import SimConfig
from simulator.errors import SimulatorError
from simulator.hub import Hub
from simulator.market import Exchange
from simulator.session import Session

ROOTS: dict[str, type[BaseException]] = {
    "kalshi_data": KalshiDataError,
    "gatherer": GathererError,
    "deduplicator": DedupError,
    "simulator": SimulatorError,
}


#: TEMP: exceptions in modules other engineers were editing when the roots were introduced;
#: each entry says what its module needs. Remove an entry once the class is under its root.
def _modules(package: ModuleType) -> list[ModuleType]:
    mods = [package]
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if info.name.rsplit(".", 1)[-1] == "__main__":
            continue  # importing a __main__ would run the program
        mods.append(importlib.import_module(info.name))
    return mods


def _classes() -> list[type]:
    """Every class defined (not merely imported) in the four packages."""
    found: dict[str, type] = {}
    for pkg in (kalshi_data, gatherer, deduplicator, simulator):
        for mod in _modules(pkg):
            for _, obj in inspect.getmembers(mod, inspect.isclass):
                if obj.__module__ == mod.__name__:
                    found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return list(found.values())


CLASSES = _classes()
EXCEPTIONS = [c for c in CLASSES if issubclass(c, BaseException)]


def _path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def test_the_walk_finds_the_known_exceptions():
    """The walk sees every package (else the checks below would pass on nothing)."""
    names = {_path(c) for c in EXCEPTIONS}
    for expected in (
        "kalshi_data.kalshi.rest.RateLimited",
        "gatherer.errors.SpoolFormatError",
        "deduplicator.errors.NotLeader",
        "simulator.session.CommandRefused",
        "kalshi_data.tools.audit.WindowPending",
        "simulator.rest.BadRequest",
        "simulator.admin.AdminError",
    ):
        assert expected in names


@pytest.mark.parametrize("cls", EXCEPTIONS, ids=_path)
def test_every_exception_is_under_its_package_root(cls: type[BaseException]):
    root = ROOTS[cls.__module__.split(".", 1)[0]]
    assert issubclass(cls, root), f"{_path(cls)} is not under {root.__name__}"


def test_service_roots_hang_under_the_core_root():
    """The services' roots are the core's errors too; the simulator (the exchange) is apart."""
    assert issubclass(GathererError, KalshiDataError)
    assert issubclass(DedupError, KalshiDataError)
    assert not issubclass(SimulatorError, KalshiDataError)


def test_builtin_bases_kept_for_callers_that_catch_them():
    from gatherer.errors import SpoolFormatError
    from kalshi_data.kalshi.fixedpoint import SubunitPrice
    from kalshi_data.migrate import MigrationError
    from kalshi_data.testing.pgcluster import PgClusterError
    from kalshi_data.tools.retention import RetentionError

    assert issubclass(SpoolFormatError, ValueError)
    assert issubclass(SubunitPrice, ValueError)
    for cls in (MigrationError, PgClusterError, RetentionError):
        assert issubclass(cls, RuntimeError)


def test_no_exception_name_means_two_things():
    """An exception's name is used by no other class in the four packages (``CommandError``
    is the client's event; the simulator's exception is ``CommandRefused``)."""
    by_name: dict[str, list[str]] = {}
    for cls in CLASSES:
        by_name.setdefault(cls.__name__, []).append(_path(cls))
    clashes = {c.__name__: by_name[c.__name__] for c in EXCEPTIONS if len(by_name[c.__name__]) > 1}
    assert clashes == {}


# -- the shared error-code table ------------------------------------------------------------


def test_code_table_is_complete_and_sets_are_codes():
    assert set(codes.MESSAGES) == set(WsErrorCode)
    assert {10, 25} == codes.TERMINAL
    assert {18, 27} == codes.RETRYABLE
    assert not codes.TERMINAL & codes.RETRYABLE
    assert codes.message(26) == "Subscription market limit exceeded"
    assert codes.message(6) == "6"  # retired: not in the table


def test_client_and_simulator_use_the_same_table():
    for code, text in frames.ERRORS.items():
        assert codes.MESSAGES[WsErrorCode(code)] == text
    assert wsproto.TERMINAL_ERROR_CODES is codes.TERMINAL
    assert subscription.RETRY_CODES is codes.RETRYABLE
    assert subscription.MARKET_LIMIT == WsErrorCode.SUBSCRIPTION_MARKET_LIMIT_EXCEEDED


def _pair(max_markets: int = 2) -> tuple[wsproto.WsProtocol, Session, list[str]]:
    hub = Hub(
        SimConfig(markets=20, max_markets_per_sub=max_markets),
        Exchange(1, 20, 1_700_000_000),
        now_ms=lambda: 1_700_000_000_000,
    )
    session = Session(1, hub)
    hub.add(session)
    tickers = [m.ticker for m in hub.exchange.market_list if m.status == "active"][:3]
    return wsproto.WsProtocol(), session, tickers


def _exchange(client: wsproto.WsProtocol, session: Session, cmd: wsproto.Command | None):
    if cmd is not None:
        session.handle(cmd.text)
    events = [e for frame in session.out for e in client.feed(frame)]
    session.out.clear()
    return events


def test_a_refusal_from_the_simulator_reaches_the_client_with_code_and_text():
    client, session, tickers = _pair(max_markets=2)
    (sub,) = _exchange(client, session, client.subscribe(["trade"], tickers[:1]))
    assert isinstance(sub, wsproto.Subscribed)
    events = _exchange(client, session, client.add_markets(sub.sid, tickers[1:3]))
    (err,) = [e for e in events if isinstance(e, wsproto.CommandError)]
    assert err.code == WsErrorCode.SUBSCRIPTION_MARKET_LIMIT_EXCEEDED
    assert err.msg == codes.MESSAGES[WsErrorCode.SUBSCRIPTION_MARKET_LIMIT_EXCEEDED]
    assert err.sid == sub.sid


def test_a_terminal_code_from_the_simulator_is_terminal_for_the_client():
    client, session, tickers = _pair()
    (sub,) = _exchange(client, session, client.subscribe(["trade"], tickers[:1]))
    for code in codes.TERMINAL:
        assert session.end_sub(sub.sid, code)
        (event,) = _exchange(client, session, None)
        assert event == wsproto.Resubscribe(sub.sid, "trade", (tickers[0],), code)
        (sub,) = _exchange(client, session, client.subscribe(["trade"], tickers[:1]))


def test_a_retryable_refusal_from_the_simulator_is_retryable_for_the_client():
    client, session, tickers = _pair()
    (sub,) = _exchange(client, session, client.subscribe(["trade"], tickers[:1]))
    for code in sorted(codes.RETRYABLE):
        session.refuse.append(code)
        (err,) = _exchange(client, session, client.delete_markets(sub.sid, tickers[:1]))
        assert isinstance(err, wsproto.CommandError)
        assert err.code in subscription.RETRY_CODES
        assert err.msg == codes.message(code)


def test_error_frames_carry_plain_integer_codes():
    """An IntEnum member goes on the wire as its number."""
    frame = orjson.loads(frames.error(WsErrorCode.CHANNEL_ERROR, 3, sid=1))
    assert frame["msg"] == {"code": 10, "msg": "Channel error"}
