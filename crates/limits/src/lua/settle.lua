#!lua
-- Settle a reservation of reserve.lua once the call is over.
-- KEYS[1] state hash, KEYS[2] leases hash, KEYS[3] usage hash
-- ARGV[1] worker id, ARGV[2] 1 if a concurrency lease was taken, ARGV[3] estimated tokens,
-- ARGV[4] tokens used (as reported), ARGV[5] ms per token (0: no tpm), ARGV[6] outcome:
-- `ok` (the provider answered: the key works), `account` (401/403), `failed` (5xx or no
-- answer), `unsent` (reserved but not sent), ARGV[7] cooldown (ms, 0: none), ARGV[8] its
-- reason, ARGV[9] account failure threshold, ARGV[10] probe every (ms), ARGV[11] the
-- failure's text, ARGV[12] 1 if this call was the account's probe
-- Returns 1 when the account is paused after this call, else 0.
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
if ARGV[2] == '1' then
  if redis.call('HINCRBY', KEYS[2], ARGV[1], -1) <= 0 then
    redis.call('HDEL', KEYS[2], ARGV[1])
  end
end
local outcome = ARGV[6]
local tok_ms = tonumber(ARGV[5])
local used = tonumber(ARGV[4])
if outcome == 'unsent' or outcome == 'account' then used = 0 end
if tok_ms > 0 then
  -- Give back what the estimate over-booked (or take what it under-booked).
  local tat = tonumber(redis.call('HGET', KEYS[1], 'tat_tok')) or now
  tat = tat + (used - tonumber(ARGV[3])) * tok_ms
  if tat < now then tat = now end
  redis.call('HSET', KEYS[1], 'tat_tok', tat)
end
if outcome ~= 'unsent' then
  local sec = math.floor(now / 1000)
  local field = tostring(sec % 60)
  local cur = redis.call('HGET', KEYS[3], field)
  local csec, creq, ctok = 0, 0, 0
  if cur then
    local a, b, c = string.match(cur, '^(%d+):(%d+):(%d+)$')
    csec, creq, ctok = tonumber(a), tonumber(b), tonumber(c)
  end
  if csec ~= sec then creq, ctok = 0, 0 end
  redis.call('HSET', KEYS[3], field, sec .. ':' .. (creq + 1) .. ':' .. (ctok + used))
  redis.call('PEXPIRE', KEYS[3], 120000)
end
local cooldown = tonumber(ARGV[7])
if cooldown > 0 then
  local until_ms = now + cooldown
  local cur = tonumber(redis.call('HGET', KEYS[1], 'cooldown_until')) or 0
  if until_ms > cur then
    redis.call('HSET', KEYS[1], 'cooldown_until', until_ms, 'cooldown_reason', ARGV[8])
  end
  redis.call('HINCRBY', KEYS[1], 'cooldowns', 1)
end
local threshold = tonumber(ARGV[9])
if threshold <= 0 then return 0 end
if outcome == 'ok' then
  redis.call('HDEL', KEYS[1], 'fails', 'paused', 'pause_reason', 'probe_at', 'probe_until')
  redis.call('HSET', KEYS[1], 'ok_at', now)
  return 0
end
if outcome == 'account' or outcome == 'failed' then
  local fails = redis.call('HINCRBY', KEYS[1], 'fails', 1)
  redis.call('HDEL', KEYS[1], 'probe_until')
  local paused = redis.call('HGET', KEYS[1], 'paused') == '1'
  if paused or fails >= threshold then
    if not paused then redis.call('HINCRBY', KEYS[1], 'pauses', 1) end
    redis.call('HSET', KEYS[1], 'paused', 1, 'pause_reason', ARGV[11],
      'probe_at', now + tonumber(ARGV[10]), 'paused_at', now)
    return 1
  end
  return 0
end
if ARGV[12] == '1' then redis.call('HDEL', KEYS[1], 'probe_until') end
return redis.call('HGET', KEYS[1], 'paused') == '1' and 1 or 0
