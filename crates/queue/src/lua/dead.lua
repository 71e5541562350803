-- Move an entry to the role's dead letters.
-- KEYS[1] the worker's in-flight hash, KEYS[2] dead letters hash, KEYS[3] dead letter
-- index zset (by time), KEYS[4] stats hash
-- ARGV[1] the entry as fetched, ARGV[2] job id, ARGV[3] dead letter record (JSON)
-- The index is scored by Redis's clock, which expire_dead.lua compares against.
-- Returns 1, or 0 when this worker no longer held the entry (see retry.lua).
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
local now = now_ms()
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[3], now, ARGV[2])
redis.call('HINCRBY', KEYS[4], 'dead', 1)
return 1
