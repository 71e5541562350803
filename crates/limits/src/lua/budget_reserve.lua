#!lua
-- Reserve the worst-case cost of one call against the day's fleet and tenant budgets and
-- the task's budget, atomically: no burst of concurrent calls can overshoot a cap.
-- KEYS[1] the day's spend hash, KEYS[2] holds hash, KEYS[3] hold expiry zset,
-- KEYS[4] the task's spend hash
-- ARGV[1] hold id, ARGV[2] worst-case cost (nano-USD), ARGV[3] fleet cap (-1: none),
-- ARGV[4] tenant ('' : none), ARGV[5] tenant cap (-1: none), ARGV[6] task cap (-1: none),
-- ARGV[7] hold lifetime (ms), ARGV[8] task spend lifetime (ms)
-- The day is Redis's UTC day; the spend hash holds `day` and is reset when it changes.
-- Amounts: `fleet`, `tenant:<t>` spent; `fleet:r`, `tenant:<t>:r` reserved.
-- Returns {1, fleet spent, fleet reserved} or {0, which budget, spent, reserved, cap}.
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local day = tostring(math.floor(t[1] / 86400))
if redis.call('HGET', KEYS[1], 'day') ~= day then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'day', day)
end
-- Reservations of workers that died mid-call are given back.
local stale = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, 100)
for i = 1, #stale do
  local rec = redis.call('HGET', KEYS[2], stale[i])
  if rec then
    local d, tenant, amount = string.match(rec, '^(%d+)|(.*)|(%d+)$')
    if d == day then
      redis.call('HINCRBY', KEYS[1], 'fleet:r', -tonumber(amount))
      if tenant ~= '' then redis.call('HINCRBY', KEYS[1], 'tenant:' .. tenant .. ':r', -tonumber(amount)) end
    end
    redis.call('HDEL', KEYS[2], stale[i])
  end
end
if #stale > 0 then redis.call('ZREM', KEYS[3], unpack(stale)) end
local amount = tonumber(ARGV[2])
local function over(spent_field, cap)
  if cap < 0 then return nil end
  local spent = tonumber(redis.call('HGET', KEYS[1], spent_field)) or 0
  local reserved = tonumber(redis.call('HGET', KEYS[1], spent_field .. ':r')) or 0
  if spent + reserved + amount > cap then return {spent, reserved} end
  return nil
end
local fleet_cap = tonumber(ARGV[3])
local o = over('fleet', fleet_cap)
if o then return {0, 'fleet', o[1], o[2], fleet_cap} end
local tenant = ARGV[4]
local tenant_cap = tonumber(ARGV[5])
if tenant ~= '' then
  o = over('tenant:' .. tenant, tenant_cap)
  if o then return {0, 'tenant', o[1], o[2], tenant_cap} end
end
local task_cap = tonumber(ARGV[6])
if task_cap >= 0 then
  local spent = tonumber(redis.call('HGET', KEYS[4], 'spent')) or 0
  local reserved = 0
  local task = redis.call('HGETALL', KEYS[4])
  for i = 1, #task, 2 do
    local exp, amt = string.match(task[i + 1], '^(%d+):(%d+)$')
    if string.sub(task[i], 1, 2) == 'h:' and exp then
      if tonumber(exp) <= now then redis.call('HDEL', KEYS[4], task[i])
      else reserved = reserved + tonumber(amt) end
    end
  end
  if spent + reserved + amount > task_cap then return {0, 'task', spent, reserved, task_cap} end
  redis.call('HSET', KEYS[4], 'h:' .. ARGV[1], (now + tonumber(ARGV[7])) .. ':' .. amount)
  redis.call('PEXPIRE', KEYS[4], tonumber(ARGV[8]))
end
redis.call('HINCRBY', KEYS[1], 'fleet:r', amount)
if tenant ~= '' then redis.call('HINCRBY', KEYS[1], 'tenant:' .. tenant .. ':r', amount) end
redis.call('HSET', KEYS[2], ARGV[1], day .. '|' .. tenant .. '|' .. amount)
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[7]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], 2 * 86400000)
return {1, tonumber(redis.call('HGET', KEYS[1], 'fleet')) or 0,
  tonumber(redis.call('HGET', KEYS[1], 'fleet:r')) or 0}
