-- Put an entry that is waiting for capacity (an LLM limit, a cooldown, a paused provider
-- account) back in the scheduled set, without counting the delivery against the job.
-- KEYS[1] the worker's in-flight hash, KEYS[2] scheduled zset, KEYS[3] stats hash
-- ARGV[1] the entry as fetched, ARGV[2] delay (ms)
-- Like retry.lua, but the `{"attempt":N,` prefix is stepped back by one (fetch.lua counted
-- this delivery; waiting is not failing) and `deferred` is counted instead of `retried`.
-- The due time is Redis's clock plus the delay.
-- Returns 1, or 0 when this worker no longer held the entry (see retry.lua).
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZADD', KEYS[2], now_ms() + tonumber(ARGV[2]), with_attempt(ARGV[1], -1))
redis.call('HINCRBY', KEYS[3], 'deferred', 1)
return 1
