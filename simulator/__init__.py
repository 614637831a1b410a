"""A wire-compatible local Kalshi exchange: REST + WebSocket v2, seeded activity, faults, truth log.

Public surface: :class:`simulator.server.Simulator` and :class:`simulator.config.SimConfig`
(re-exported here), and ``simulator.__main__.main(argv)`` for the command line.
"""

from simulator.config import SimConfig
from simulator.server import Simulator

__all__ = ["SimConfig", "Simulator"]
