"""One market's order book: YES bids and NO bids (kalshi-protocol.md §3.5, §4 Orderbook).

Both sides are bids; a YES ask is ``1 - best NO bid``. Prices are 1/10,000 dollar, sizes 1/100
contract. The book never crosses: ``best_yes + best_no < 1 dollar``.
"""

from __future__ import annotations

from typing import Literal

from simulator.fixed import DOLLAR, dollars, fp

Side = Literal["yes", "no"]


class Book:
    """Levels per side, changed only through :meth:`apply` so deltas and snapshots agree."""

    __slots__ = ("no", "yes")

    def __init__(self) -> None:
        self.yes: dict[int, int] = {}
        self.no: dict[int, int] = {}

    def side(self, side: Side) -> dict[int, int]:
        """The level map of ``side``."""
        return self.yes if side == "yes" else self.no

    def apply(self, side: Side, price: int, delta: int) -> None:
        """New size = old + delta; a level at zero disappears (§3.5)."""
        levels = self.yes if side == "yes" else self.no
        size = levels.get(price, 0) + delta
        if size < 0:
            raise ValueError(f"delta {delta} at {price} on {side} would go negative")
        if size == 0:
            levels.pop(price, None)
        else:
            levels[price] = size

    def best(self, side: Side) -> tuple[int, int] | None:
        """``(price, size)`` of the best (highest) bid on ``side``, None when empty."""
        levels = self.yes if side == "yes" else self.no
        if not levels:
            return None
        p = max(levels)
        return p, levels[p]

    def crosses(self, side: Side, price: int) -> bool:
        """Would a ``side`` bid at ``price`` meet the other side's best bid?"""
        other = self.best("no" if side == "yes" else "yes")
        return other is not None and price + other[0] >= DOLLAR

    def levels(self, side: Side, depth: int = 0) -> list[list[str]]:
        """Wire levels ``[[price, count], ...]`` ascending; ``depth`` > 0 keeps the best ones."""
        levels = self.yes if side == "yes" else self.no
        rows = [[dollars(p), fp(levels[p])] for p in sorted(levels)]
        return rows[-depth:] if depth > 0 else rows

    def clear_deltas(self) -> list[tuple[Side, int, int]]:
        """The ``(side, price, delta)`` list that empties the book (not applied)."""
        out: list[tuple[Side, int, int]] = [("yes", p, -self.yes[p]) for p in sorted(self.yes)]
        out.extend(("no", p, -self.no[p]) for p in sorted(self.no))
        return out
