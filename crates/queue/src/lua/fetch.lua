-- Hand up to ARGV[2] entries to one worker, counting the delivery atomically.
-- KEYS[1] pending list, KEYS[2] the worker's in-flight hash, KEYS[3] the worker's claim
-- list (where a blocking BLMOVE parks one entry), KEYS[4] workers (heartbeat zset)
-- ARGV[1] worker id, ARGV[2] max entries
-- Times are Redis's own (TIME): the only clock that leases compare, whatever the workers'
-- clocks say.
-- Each entry's `{"attempt":N,` prefix becomes N+1 before it is recorded in flight, so a
-- worker that dies holding it has still used up that attempt. Entries that are not
-- envelopes (garbage) pass unchanged; the worker dead-letters them.
-- Returns the entries as recorded in flight (the worker acks them by these exact bytes).
local max = tonumber(ARGV[2])
local now = now_ms()
redis.call('ZADD', KEYS[4], now, ARGV[1])
local got = {}
local parked = redis.call('LRANGE', KEYS[3], 0, -1)
for i = 1, #parked do got[#got + 1] = parked[i] end
if #parked > 0 then redis.call('DEL', KEYS[3]) end
if #got < max then
  local popped = redis.call('RPOP', KEYS[1], max - #got)
  if popped then
    for i = 1, #popped do got[#got + 1] = popped[i] end
  end
end
if #got == 0 then return got end
local fields = {}
for i = 1, #got do
  local entry = with_attempt(got[i], 1)
  got[i] = entry
  fields[#fields + 1] = entry
  fields[#fields + 1] = now
end
redis.call('HSET', KEYS[2], unpack(fields))
return got
