#!lua
-- Keep a live worker's concurrency leases, and publish the limits it applies.
-- KEYS[1] state hash, KEYS[2] leases hash, KEYS[3] lease expiry zset
-- ARGV[1] worker id, ARGV[2] lease (ms), ARGV[3] rpm, ARGV[4] tpm, ARGV[5] max concurrent
-- requests, ARGV[6] account failure threshold (0 each: none)
-- A worker that stops renewing (SIGKILL) has its leases dropped by reserve.lua once they
-- expire, by Redis's clock. Returns {1, reason} when the account is paused, else {0, ''}.
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then
  redis.call('ZADD', KEYS[3], now + tonumber(ARGV[2]), ARGV[1])
end
redis.call('HSET', KEYS[1], 'rpm', ARGV[3], 'tpm', ARGV[4], 'max_concurrent', ARGV[5],
  'failure_threshold', ARGV[6], 'seen_at', now)
local st = redis.call('HMGET', KEYS[1], 'paused', 'pause_reason')
if st[1] == '1' then return {1, st[2] or ''} end
return {0, ''}
