-- A worker is alive: stamp its heartbeat with Redis's clock (never the worker's), and
-- refresh its registry record (when given) with a lease-long lifetime, so that a killed
-- worker's record is gone within its lease.
-- KEYS[1] workers zset, KEYS[2] (optional) the worker's registry hash
-- ARGV[1] worker id, ARGV[2] the record's lifetime (ms), ARGV[3..] field, value, ...
-- Returns Redis's time (ms).
local now = now_ms()
redis.call('ZADD', KEYS[1], now, ARGV[1])
if KEYS[2] then
  redis.call('HSET', KEYS[2], 'last_heartbeat_ms', now)
  if #ARGV > 2 then redis.call('HSET', KEYS[2], unpack(ARGV, 3)) end
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
return now
