#!lua
-- Reserve one provider call against a limit shared by the whole fleet.
-- KEYS[1] state hash, KEYS[2] leases hash, KEYS[3] lease expiry zset, KEYS[4] bookings zset
-- ARGV[1] worker id, ARGV[2] job (booking id), ARGV[3] ms between requests (0: no rpm),
-- ARGV[4] estimated tokens, ARGV[5] ms per token (0: no tpm), ARGV[6] max concurrent
-- requests (0: none), ARGV[7] longest in-process wait (ms), ARGV[8] lease (ms),
-- ARGV[9] account failure threshold (0: off), ARGV[10] probe every (ms),
-- ARGV[11] longest a probe call may take (ms), ARGV[12] '1' for a job of the high lane
-- KEYS[5] zset of high-lane jobs waiting for this limit → until when (ms)
-- Priority: while a high-lane job waits for this limit, every other job is told to wait
-- too, so the next free concurrency or rate slot goes to the high job.
-- Rates are a GCRA: `tat_req`/`tat_tok` are the next free slots on Redis's clock. A job
-- whose slot is further than the in-process wait books it (FIFO: the first to ask gets the
-- earliest slot) and is told to come back half an in-process wait before it.
-- Returns {0, wait ms, note}: granted, call after the wait (a concurrency lease is taken);
-- or {1, wait ms, reason}: not now, ask again after the wait.
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local high = ARGV[12] == '1'
local function decide()
  if not high then
    redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)
    if redis.call('ZCARD', KEYS[5]) > 0 then
      return {1, 100, 'priority: high-lane jobs are waiting for this limit'}
    end
  end
  local st = redis.call('HMGET', KEYS[1], 'tat_req', 'tat_tok', 'cooldown_until',
    'cooldown_reason', 'paused', 'pause_reason', 'probe_at', 'probe_until', 'fails', 'ok_at')
  local cooldown_until = tonumber(st[3]) or 0
  if cooldown_until > now then
    return {1, cooldown_until - now, 'cooldown: ' .. (st[4] or 'provider rate limit')}
  end
  local threshold = tonumber(ARGV[9])
  local probe = false
  if threshold > 0 then
    local probe_until = tonumber(st[8]) or 0
    if st[5] == '1' then
      local probe_at = tonumber(st[7]) or 0
      if now < probe_at or probe_until > now then
        local w = probe_at - now
        if w < 250 then w = tonumber(ARGV[10]) end
        return {1, w, 'account paused: ' .. (st[6] or '')}
      end
      probe = true
    elseif (tonumber(st[9]) or 0) > 0 or not st[10] then
      -- Not proven (no call answered yet, or the last one failed): one call at a time.
      if probe_until > now then
        return {1, 250, 'account unproven: one call at a time until the provider answers'}
      end
      probe = true
    end
  end
  local maxc = tonumber(ARGV[6])
  if maxc > 0 then
    local gone = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, 100)
    for i = 1, #gone do redis.call('HDEL', KEYS[2], gone[i]) end
    if #gone > 0 then redis.call('ZREM', KEYS[3], unpack(gone)) end
    local total = 0
    local held = redis.call('HVALS', KEYS[2])
    for i = 1, #held do total = total + tonumber(held[i]) end
    if total >= maxc then return {1, 100, 'concurrency'} end
  end
  local req_ms = tonumber(ARGV[3])
  local tok_ms = tonumber(ARGV[5])
  local max_wait = tonumber(ARGV[7])
  local slot = now
  if req_ms > 0 or tok_ms > 0 then
    local booked = tonumber(redis.call('ZSCORE', KEYS[4], ARGV[2]))
    local late = math.max(req_ms, 250)
    if booked and booked >= now - late then
      if booked > now + max_wait then
        return {1, booked - now - math.floor(max_wait / 2), 'rate (booked)'}
      end
      redis.call('ZREM', KEYS[4], ARGV[2])
      slot = math.max(booked, now)
    else
      if booked then redis.call('ZREM', KEYS[4], ARGV[2]) end
      slot = math.max(now, tonumber(st[1]) or 0, tonumber(st[2]) or 0)
      local tat_req = slot + req_ms
      local tat_tok = slot + tonumber(ARGV[4]) * tok_ms
      redis.call('HSET', KEYS[1], 'tat_req', tat_req, 'tat_tok', tat_tok)
      if slot > now + max_wait then
        redis.call('ZADD', KEYS[4], slot, ARGV[2])
        redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - 600000)
        return {1, slot - now - math.floor(max_wait / 2), 'rate'}
      end
    end
  end
  if probe then
    redis.call('HSET', KEYS[1], 'probe_until', slot + tonumber(ARGV[11]))
  end
  if maxc > 0 then
    redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
    redis.call('ZADD', KEYS[3], now + tonumber(ARGV[8]), ARGV[1])
  end
  if probe then return {0, slot - now, 'probe'} end
  return {0, slot - now, ''}
end
local out = decide()
if high then
  if out[1] == 1 then
    redis.call('ZADD', KEYS[5], now + out[2] + 2000, ARGV[2])
  else
    redis.call('ZREM', KEYS[5], ARGV[2])
  end
end
return out
