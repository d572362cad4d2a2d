"""The Redis token bucket holds one limit across processes, and a per-chat limit inside it."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import redis

from gateway.delivery.ratelimit import TokenBucket
from tests.conftest import ROOT

RATE = 40.0
SECONDS = 2.0

HAMMER = """
import sys, time, redis
from gateway.delivery.ratelimit import TokenBucket
bucket = TokenBucket(redis.Redis.from_url(sys.argv[1]), "shared", float(sys.argv[2]))
granted, end = 0, float(sys.argv[3])
while time.time() < end:
    flags, wait = bucket.take([1, 1, 1])
    granted += sum(flags)
    time.sleep(min(wait, 0.005))
print(granted)
"""


@pytest.mark.slow
def test_two_processes_share_one_limit(redis_url):
    end = time.time() + 1.0 + SECONDS  # both start hammering at the same wall-clock moment
    hammers = [subprocess.Popen([sys.executable, "-c", HAMMER, redis_url, str(RATE), str(end)], cwd=ROOT,
                                stdout=subprocess.PIPE, text=True) for _ in range(2)]
    granted = [int(h.communicate(timeout=30)[0]) for h in hammers]
    # The bucket starts full (one second's worth), then refills at RATE: never more than that in total.
    allowed = RATE + RATE * (SECONDS + 1.0)
    assert sum(granted) <= allowed + 3
    assert sum(granted) >= 0.8 * RATE * SECONDS
    assert min(granted) > 0  # both got a share


def test_per_chat_limit_skips_a_busy_chat_but_serves_the_others(redis_url):
    bucket = TokenBucket(redis.Redis.from_url(redis_url), "chats", 30, item_rate=1)
    flags, wait = bucket.take([1, 1, 1], ["42", "43", "42"])
    assert flags == [True, True, False] and 0 < wait <= 1.0
    assert bucket.take([1], ["42"])[0] == [False]
    time.sleep(wait + 0.05)
    assert bucket.take([1], ["42"])[0] == [True]


def test_no_limit_needs_no_redis():
    bucket = TokenBucket(redis.Redis(unix_socket_path="/nonexistent"), "free", 0)
    assert bucket.take([1, 5, 2]) == ([True, True, True], 0.0)
