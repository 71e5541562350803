-- Move scheduled entries that are due (retries, delayed tasks, jobs that waited for
-- capacity) onto their lanes' lists, a bounded chunk at a time.
-- KEYS[1] scheduled zset, KEYS[2..5] the lanes: high, normal, low pending lists, wake list
-- ARGV[1] at most this many
-- "Due" is by Redis's clock.
-- Returns {moved, ms until the next entry is due, or -1 when none is scheduled}.
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
if #due > 0 then
  redis.call('ZREM', KEYS[1], unpack(due))
  push_to_lanes('LPUSH', lanes_at(2), due)
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local wait = -1
if #nxt == 2 then wait = math.max(0, tonumber(nxt[2]) - now) end
return {#due, wait}
