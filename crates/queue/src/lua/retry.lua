-- Schedule a failed entry for another attempt after a delay.
-- KEYS[1] the worker's in-flight hash, KEYS[2] scheduled zset, KEYS[3] stats hash
-- ARGV[1] the entry as fetched, ARGV[2] the entry to schedule (with its error noted),
-- ARGV[3] delay (ms)
-- The due time is Redis's clock plus the delay: the worker's clock never sets it.
-- Returns 1, or 0 when this worker no longer held the entry (an earlier try of this call
-- committed, or its lease was recovered by another worker, which owns the job now:
-- scheduling it too would duplicate it).
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
local now = now_ms()
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[2])
redis.call('HINCRBY', KEYS[3], 'retried', 1)
return 1
