-- Give back everything a stopping worker still holds, at once rather than after the lease.
-- KEYS[1] the worker's in-flight hash, KEYS[2] its claim list, KEYS[3] workers zset,
-- KEYS[4..7] the lanes (high, normal, low pending lists, wake list)
-- ARGV[1] worker id
-- The delivery is not counted against the job (the job did not fail; the worker left), so
-- the attempt prefix is stepped back by one.
-- Returns the number of entries handed back.
local back = {}
local parked = redis.call('LRANGE', KEYS[2], 0, -1)
for i = 1, #parked do back[#back + 1] = parked[i] end
local held = redis.call('HKEYS', KEYS[1])
for i = 1, #held do
  back[#back + 1] = with_attempt(held[i], -1)
end
push_to_lanes('RPUSH', lanes_at(4), back)
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
return #back
