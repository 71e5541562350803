-- Move scheduled entries that are due onto the pending list, a bounded chunk at a time.
-- KEYS[1] scheduled zset, KEYS[2] pending list
-- ARGV[1] now (ms), ARGV[2] at most this many
-- Returns {moved, ms of the next due entry or -1}.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #due > 0 then
  redis.call('ZREM', KEYS[1], unpack(due))
  redis.call('LPUSH', KEYS[2], unpack(due))
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local next_ms = -1
if #nxt == 2 then next_ms = tonumber(nxt[2]) end
return {#due, next_ms}
