-- List workers whose heartbeat is older than the lease, by Redis's clock.
-- KEYS[1] workers zset
-- ARGV[1] lease (ms), ARGV[2] at most this many, ARGV[3] the asking worker's id (never
-- listed: a worker does not recover itself)
-- Read-only: the recovery itself (recover.lua) checks again, atomically.
local now = now_ms()
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - tonumber(ARGV[1])),
  'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for i = 1, #ids do
  if ids[i] ~= ARGV[3] then out[#out + 1] = ids[i] end
end
return out
