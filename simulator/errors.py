"""The simulator's exception tree.

    SimulatorError
    ├── AuthRefused(reason)       auth.verify refused the headers: the shell answers HTTP 401
    └── CommandRefused(code, sid) session: a command refused with a §3.2 code (an error frame)

Not yet under the root (their modules are being edited elsewhere; see docs/simulator.md):
``simulator.rest.BadRequest`` (HTTP 400) and ``simulator.admin.AdminError`` (status, message).

The simulator imports only ``kalshi_data``'s protocol pieces, so its root is not a
``KalshiDataError``: a simulator refusal is the exchange speaking, not a fault of the data
stack. The names differ from the client's on purpose: ``CommandError`` is the client's *event*
(:mod:`kalshi_data.kalshi.wsproto`) and ``AuthError`` its REST *exception*
(:mod:`kalshi_data.kalshi.rest`).
"""

from __future__ import annotations


class SimulatorError(Exception):
    """Base of the simulator's own errors."""
