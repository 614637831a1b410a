"""Exchange WebSocket error codes (kalshi-protocol.md §3.2), shared by the client and the simulator.

The names follow Kalshi's published error table (AsyncAPI ``errorResponsePayload``); the message
is the ``msg.msg`` text the exchange sends with each code. Retired codes (6 "Already subscribed",
16 "Market not found", 17 "Internal error") are reserved and not listed: the exchange no longer
sends them, and a client meeting one treats it as any unknown code.

Two sets classify a code for the client's recovery:

- :data:`TERMINAL`: the subscription named by ``sid`` is dead and must be subscribed again
  (10 channel error, 25 subscription buffer overflow).
- :data:`RETRYABLE`: the command was refused for a passing reason and is sent again unchanged
  after a pause (18 command timeout, 27 per-subscription command rate limit).

Every other code is a refusal of a malformed or impossible command.
"""

from __future__ import annotations

from enum import IntEnum
from types import MappingProxyType


class WsErrorCode(IntEnum):
    """A WebSocket ``error`` frame's ``msg.code``; members compare equal to plain ints."""

    UNABLE_TO_PROCESS_MESSAGE = 1
    PARAMS_REQUIRED = 2
    CHANNELS_REQUIRED = 3
    SUBSCRIPTION_IDS_REQUIRED = 4
    UNKNOWN_COMMAND = 5
    UNKNOWN_SUBSCRIPTION_ID = 7
    UNKNOWN_CHANNEL_NAME = 8
    AUTHENTICATION_REQUIRED = 9
    CHANNEL_ERROR = 10
    INVALID_PARAMETER = 11
    EXACTLY_ONE_SUBSCRIPTION_ID_REQUIRED = 12
    UNSUPPORTED_ACTION = 13
    MARKET_TICKER_REQUIRED = 14
    ACTION_REQUIRED = 15
    COMMAND_TIMEOUT = 18
    INVALID_SHARD_FACTOR = 19
    SHARD_FACTOR_REQUIRED = 20
    INVALID_SHARD_KEY = 21
    SHARD_FACTOR_TOO_LARGE = 22
    MATCH_IDS_REQUIRED = 23
    INDEX_IDS_REQUIRED = 24
    SUBSCRIPTION_BUFFER_OVERFLOW = 25
    SUBSCRIPTION_MARKET_LIMIT_EXCEEDED = 26
    TOO_MANY_REQUESTS = 27
    UNDERLYING_TICKERS_REQUIRED = 28


C = WsErrorCode

#: Code -> the exchange's message text (§3.2).
MESSAGES: MappingProxyType[WsErrorCode, str] = MappingProxyType(
    {
        C.UNABLE_TO_PROCESS_MESSAGE: "Unable to process message",
        C.PARAMS_REQUIRED: "Params required",
        C.CHANNELS_REQUIRED: "Channels required",
        C.SUBSCRIPTION_IDS_REQUIRED: "Subscription IDs required",
        C.UNKNOWN_COMMAND: "Unknown command",
        C.UNKNOWN_SUBSCRIPTION_ID: "Unknown subscription ID",
        C.UNKNOWN_CHANNEL_NAME: "Unknown channel name",
        C.AUTHENTICATION_REQUIRED: "Authentication required",
        C.CHANNEL_ERROR: "Channel error",
        C.INVALID_PARAMETER: "Invalid parameter",
        C.EXACTLY_ONE_SUBSCRIPTION_ID_REQUIRED: "Exactly one subscription ID is required",
        C.UNSUPPORTED_ACTION: "Unsupported action",
        C.MARKET_TICKER_REQUIRED: "Market Ticker required",
        C.ACTION_REQUIRED: "Action required",
        C.COMMAND_TIMEOUT: "Command timeout",
        C.INVALID_SHARD_FACTOR: "shard_factor must be > 0",
        C.SHARD_FACTOR_REQUIRED: "shard_factor is required when shard_key is set",
        C.INVALID_SHARD_KEY: "shard_key must be >= 0 and < shard_factor",
        C.SHARD_FACTOR_TOO_LARGE: "shard_factor must be <= 100",
        C.MATCH_IDS_REQUIRED: "Match IDs required",
        C.INDEX_IDS_REQUIRED: "Index IDs required",
        C.SUBSCRIPTION_BUFFER_OVERFLOW: "Subscription buffer overflow",
        C.SUBSCRIPTION_MARKET_LIMIT_EXCEEDED: "Subscription market limit exceeded",
        C.TOO_MANY_REQUESTS: "Too many requests",
        C.UNDERLYING_TICKERS_REQUIRED: "Underlying tickers required",
    }
)

#: Subscription-scoped errors after which the subscription is dead: subscribe again.
TERMINAL: frozenset[WsErrorCode] = frozenset({C.CHANNEL_ERROR, C.SUBSCRIPTION_BUFFER_OVERFLOW})
#: Errors after which the same command is sent again after a pause, nothing else changed.
RETRYABLE: frozenset[WsErrorCode] = frozenset({C.COMMAND_TIMEOUT, C.TOO_MANY_REQUESTS})

del C


def message(code: int) -> str:
    """The exchange's text for ``code``, or the number itself for a code not in the table."""
    try:
        return MESSAGES[WsErrorCode(code)]
    except ValueError:
        return str(code)
