-- A worker is alive: stamp its heartbeat with Redis's clock (never the worker's).
-- KEYS[1] workers zset
-- ARGV[1] worker id
-- Returns Redis's time (ms).
local now = now_ms()
redis.call('ZADD', KEYS[1], now, ARGV[1])
return now
