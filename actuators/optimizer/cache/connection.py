"""Connections to the analysed Redis, and the errors the cache optimizer raises.

Every Redis error is wrapped (the original stays as ``__cause__``) into one that says
whether retrying helps:

- :class:`CacheSettingsInvalid` (422): ``optimization.cache.redisUrl`` is missing, malformed,
  or its credentials are refused;
- :class:`RedisUnavailable` (503, temporary): the server cannot be reached or timed out;
- :class:`RedisRefused` (409): the server refuses what the optimizer needs: a read-only
  replica, ``CONFIG``/``MONITOR`` renamed or disabled, an ACL without the permission;
- :class:`RedisCommandFailed` (502): any other error reply;
- :class:`NotEnoughTraffic` (409): too few lookups to measure a hit rate.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from tmsops.errors import PermanentError, TemporaryError

URL_SETTING = "optimization.cache.redisUrl"
CONNECT_TIMEOUT_S = 5.0
COMMAND_TIMEOUT_S = 30.0
RETRY_AFTER_S = 5.0


class CacheSettingsInvalid(PermanentError):
    http_status = 422


class RedisUnavailable(TemporaryError):
    http_status = 503


class RedisRefused(PermanentError):
    http_status = 409


class RedisCommandFailed(PermanentError):
    http_status = 502


class NotEnoughTraffic(PermanentError):
    http_status = 409


def connect(url: str | None) -> aioredis.Redis:
    """A client for ``url`` (``redis://``, ``rediss://`` or ``unix://``); no connection is made yet."""
    if not url:
        raise CacheSettingsInvalid(f"{URL_SETTING} is not set: the cache optimizer needs the Redis to analyse")
    try:
        client = aioredis.Redis.from_url(
            url,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            socket_timeout=COMMAND_TIMEOUT_S,
            decode_responses=False,
        )
        kwargs = client.connection_pool.connection_kwargs
        port = kwargs.get("port", 6379)
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"port {port} out of range")
    except (ValueError, TypeError) as error:
        raise CacheSettingsInvalid(
            f"{URL_SETTING} is not a usable Redis URL ({error}); expected redis://[user:password@]host:port/db",
            details={"setting": URL_SETTING},
        ) from error
    return client


def describe(url: str) -> str:
    """The URL without its password, for messages."""
    scheme, separator, rest = url.partition("://")
    if not separator or "@" not in rest:
        return url
    credentials, _, address = rest.rpartition("@")
    user = credentials.partition(":")[0]
    return f"{scheme}://{user + ':***@' if user else '***@'}{address}"


@contextmanager
def redis_errors_wrapped(action: str, where: str) -> Iterator[None]:
    """Translate Redis errors raised while doing ``action`` on ``where`` (a password-free address)."""
    try:
        yield
    except redis_errors.AuthenticationError as error:
        raise CacheSettingsInvalid(
            f"{where} refused the credentials of {URL_SETTING} while trying to {action}: {error}",
            details={"setting": URL_SETTING},
        ) from error
    except (redis_errors.ConnectionError, redis_errors.TimeoutError, ConnectionError, TimeoutError) as error:
        raise RedisUnavailable(
            f"cannot {action}: {where} is unreachable ({error or type(error).__name__})",
            retry_after=RETRY_AFTER_S,
            details={"redis": where},
        ) from error
    except redis_errors.ReadOnlyError as error:
        raise RedisRefused(
            f"cannot {action}: {where} is a read-only replica; apply cache settings on its primary",
            details={"redis": where},
        ) from error
    except redis_errors.NoPermissionError as error:
        raise RedisRefused(
            f"cannot {action}: the user of {URL_SETTING} lacks the permission ({error})",
            details={"redis": where},
        ) from error
    except redis_errors.ResponseError as error:
        text = str(error)
        if "unknown command" in text.lower() or text.startswith("READONLY"):
            raise RedisRefused(
                f"cannot {action}: {where} refuses the command ({text}); it is renamed or disabled "
                "(rename-command) on this server, so the optimizer cannot read or change its cache settings",
                details={"redis": where},
            ) from error
        raise RedisCommandFailed(f"cannot {action}: {where} answered {text}", details={"redis": where}) from error
    except redis_errors.RedisError as error:
        raise RedisCommandFailed(f"cannot {action} on {where}: {error}", details={"redis": where}) from error
