"""The Kalshi protocol core: signer, REST client, sans-I/O WebSocket state, frame parsing.

Modules (import them directly; this package imports nothing so that ``kalshi_data.records`` can
use :mod:`kalshi_data.kalshi.fixedpoint` without cycles):

- :mod:`.fixedpoint`: exact prices, counts and timestamps;
- :mod:`.signer`: RSA-PSS request signing (``KALSHI-ACCESS-*`` headers);
- :mod:`.parse`: bytes -> envelope -> typed record or dead letter, never raising;
- :mod:`.wsproto`: WebSocket command/response/sequence state, no sockets;
- :mod:`.rest`: rate-limited, retried, paginated REST client (aiohttp);
- :mod:`.wsconnect`: opening an authenticated WebSocket (the thin I/O shell's one helper).
"""
