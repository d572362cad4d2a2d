"""Provider rate limits shared by every worker: token buckets kept in Redis, taken by one Lua script.

A send job asks for a whole chunk at once: `take([cost, ...], per_key)` grants the longest prefix
of the chunk the provider-wide bucket can pay for, skipping items whose own key (a Telegram chat:
~1 message/s each) is empty, and says how long to wait for more. The script reads Redis's clock
and updates the buckets atomically, so any number of processes share one limit exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

# KEYS: the provider bucket, then one key per item when per-item limiting is on.
# ARGV: rate, burst, item rate, item burst, then each item's cost. Returns a 0/1 flag per item,
# then how many milliseconds until the first item refused now could be granted.
TAKE = """
local now_t = redis.call('TIME')
local now = tonumber(now_t[1]) + tonumber(now_t[2]) / 1e6
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local item_rate, item_burst = tonumber(ARGV[3]), tonumber(ARGV[4])

local function load(key, r, b)
  local state = redis.call('HMGET', key, 'tokens', 'at')
  local tokens = tonumber(state[1]) or b
  local at = tonumber(state[2]) or now
  return math.min(b, tokens + math.max(0, now - at) * r)
end
local function store(key, tokens, r, b)
  redis.call('HSET', key, 'tokens', tokens, 'at', now)
  redis.call('PEXPIRE', key, math.ceil(b / r * 1000) + 1000)
end

local tokens = load(KEYS[1], rate, burst)
local flags, wait = {}, 0
for i = 5, #ARGV do
  local cost = tonumber(ARGV[i])
  if tokens < cost then
    wait = (cost - tokens) / rate
    break
  end
  local granted = 1
  if item_rate > 0 then
    local key = KEYS[i - 3]
    local own = load(key, item_rate, item_burst)
    if own < 1 then
      granted = 0
      local own_wait = (1 - own) / item_rate
      if wait == 0 or own_wait < wait then wait = own_wait end
    else
      store(key, own - 1, item_rate, item_burst)
    end
  end
  if granted == 1 then tokens = tokens - cost end
  flags[#flags + 1] = granted
end
for _ = #flags + 1, #ARGV - 4 do flags[#flags + 1] = 0 end
store(KEYS[1], tokens, rate, burst)
flags[#flags + 1] = math.ceil(wait * 1000)
return flags
"""


@dataclass
class TokenBucket:
    """`rate` tokens a second, up to `burst` saved up; rate 0 means no limit at all."""

    connection: redis.Redis
    name: str
    rate: float
    burst: float = 0.0  # 0: one second's worth
    item_rate: float = 0.0  # per-item limit (e.g. per chat); 0: none
    item_burst: float = 1.0

    def __post_init__(self) -> None:
        self._script = self.connection.register_script(TAKE)

    def take(self, costs: list[float], items: list[str] | None = None) -> tuple[list[bool], float]:
        """Which items may go now, and seconds until more could (0 when all were granted)."""
        if self.rate <= 0 or not costs:
            return [True] * len(costs), 0.0
        keys = [f"ratelimit:{self.name}"]
        if self.item_rate > 0:
            assert items is not None and len(items) == len(costs), "one item key per cost"
            keys += [f"ratelimit:{self.name}:{item}" for item in items]
        burst = self.burst or max(self.rate, max(costs))
        reply = self._script(keys=keys, args=[self.rate, burst, self.item_rate, self.item_burst, *costs])
        return [bool(flag) for flag in reply[:-1]], reply[-1] / 1000
