-- Drop review index entries older than the retention (the record lifetime: their task
-- records are gone by then), a bounded chunk at a time.
-- KEYS[1] review index zset
-- ARGV[1] retention (ms), ARGV[2] at most this many
-- Age is by Redis's clock (the index is scored by it). Returns how many were dropped.
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms() - tonumber(ARGV[1]), 'LIMIT', 0, tonumber(ARGV[2]))
if #old == 0 then return 0 end
redis.call('ZREM', KEYS[1], unpack(old))
return #old
