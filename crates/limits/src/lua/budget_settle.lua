#!lua
-- Settle a reservation of budget_reserve.lua at the call's real cost.
-- KEYS[1] the day's spend hash, KEYS[2] holds hash, KEYS[3] hold expiry zset,
-- KEYS[4] the task's spend hash
-- ARGV[1] hold id, ARGV[2] real cost (nano-USD), ARGV[3] task spend lifetime (ms),
-- ARGV[4] tenant ('': none)
-- Spend is booked to the day the call settles in (Redis's UTC day).
-- Returns the fleet's spend today (nano-USD).
local t = redis.call('TIME')
local day = tostring(math.floor(t[1] / 86400))
if redis.call('HGET', KEYS[1], 'day') ~= day then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'day', day)
end
local rec = redis.call('HGET', KEYS[2], ARGV[1])
if rec then
  local d, tenant, amount = string.match(rec, '^(%d+)|(.*)|(%d+)$')
  if d == day then
    redis.call('HINCRBY', KEYS[1], 'fleet:r', -tonumber(amount))
    if tenant ~= '' then redis.call('HINCRBY', KEYS[1], 'tenant:' .. tenant .. ':r', -tonumber(amount)) end
  end
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
end
redis.call('HDEL', KEYS[4], 'h:' .. ARGV[1])
local cost = tonumber(ARGV[2])
if cost > 0 then
  redis.call('HINCRBY', KEYS[1], 'fleet', cost)
  if ARGV[4] ~= '' then redis.call('HINCRBY', KEYS[1], 'tenant:' .. ARGV[4], cost) end
  redis.call('HINCRBY', KEYS[4], 'spent', cost)
  redis.call('PEXPIRE', KEYS[4], tonumber(ARGV[3]))
end
redis.call('PEXPIRE', KEYS[1], 2 * 86400000)
return tonumber(redis.call('HGET', KEYS[1], 'fleet')) or 0
