"""A lease in Redis: exactly one sweeper (and so one clock) acts at a time across hosts.

Why Redis, for SQLite and PostgreSQL alike: every role already shares the one Redis, so one
mechanism serves both stores; and a lease expires after its time-to-live whatever happens to its
holder. A PostgreSQL advisory lock is released only when the server notices the holder's
connection is gone: at once when the process dies, but only after TCP keepalive (two hours by
default) when its host is cut off.

Each acquisition takes a new fencing token from a counter that only grows. The holder renews
before every sweep; a holder paused past the time-to-live (a stopped VM, a long GC) finds on
renewal that the lease has another holder and stands down. Between its last renewal and that
moment it could still act once more, so every duty is idempotent anyway: rows are claimed by
conditional UPDATEs, the clock's moves check the case's state and last update.
"""

from __future__ import annotations

import os
import secrets
import socket

import redis

# KEYS: the lease, the token counter. ARGV: holder, time-to-live in ms. Returns the token, or nil.
_ACQUIRE_OR_RENEW = """
local value = redis.call('GET', KEYS[1])
if value then
  local holder, token = string.match(value, '^(.*)|(%d+)$')
  if holder == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return tonumber(token)
  end
  return false
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. token, 'PX', ARGV[2])
return token
"""
# KEYS: the lease. ARGV: holder. Deletes it only if it is still ours.
_RELEASE = """
local value = redis.call('GET', KEYS[1])
if value and string.match(value, '^(.*)|%d+$') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class Lease:
    """`hold()` acquires or renews; the fencing token while held, else None."""

    def __init__(self, connection: redis.Redis, name: str, ttl: float, holder: str | None = None):
        self.key = f"gridline:lease:{name}"
        self.ttl_ms = max(1, int(ttl * 1000))
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._acquire = connection.register_script(_ACQUIRE_OR_RENEW)
        self._release = connection.register_script(_RELEASE)

    def hold(self) -> int | None:
        token = self._acquire(keys=[self.key, f"{self.key}:token"], args=[self.holder, self.ttl_ms])
        return None if token is None else int(token)

    def release(self) -> None:
        """On a clean stop, so a standby need not wait for the time-to-live."""
        self._release(keys=[self.key], args=[self.holder])
