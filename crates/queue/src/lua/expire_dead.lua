-- Drop dead letters older than the retention, a bounded chunk at a time.
-- KEYS[1] dead letters hash, KEYS[2] dead letter index
-- ARGV[1] retention (ms), ARGV[2] at most this many
-- Age is by Redis's clock (the index is scored by it).
-- Returns how many were dropped.
local now = now_ms()
local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[1]), 'LIMIT', 0, tonumber(ARGV[2]))
if #old == 0 then return 0 end
redis.call('HDEL', KEYS[1], unpack(old))
redis.call('ZREM', KEYS[2], unpack(old))
return #old
