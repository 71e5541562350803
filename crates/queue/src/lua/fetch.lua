-- Hand up to ARGV[2] entries to one worker, counting the delivery atomically.
-- KEYS[1..4] the lanes: high, normal, low pending lists, wake list; KEYS[5] the worker's
-- in-flight hash, KEYS[6] the worker's claim list (entries an older version's blocking
-- wait parked), KEYS[7] workers (heartbeat zset), KEYS[8] lane bookkeeping hash
-- ARGV[1] worker id, ARGV[2] max entries, ARGV[3] normal's share, ARGV[4] low's share
-- (percent of fetched entries guaranteed to the lane while it has entries waiting)
-- Lanes: `high` before `normal` before `low`, except that each lower lane earns its share
-- as credit on every entry handed out while more than one lane has work (deficit round
-- robin, kept in KEYS[8] so the shares hold across the fleet's workers): a lane with 100
-- credit takes the next entry.
-- Times are Redis's own (TIME): the only clock that leases compare, whatever the workers'
-- clocks say.
-- Each entry's `{"attempt":N,` prefix becomes N+1 before it is recorded in flight, so a
-- worker that dies holding it has still used up that attempt. Entries that are not
-- envelopes (garbage) pass unchanged; the worker dead-letters them.
-- Returns the entries as recorded in flight (the worker acks them by these exact bytes).
local lanes = lanes_at(1)
local max = tonumber(ARGV[2])
local now = now_ms()
redis.call('ZADD', KEYS[7], now, ARGV[1])

-- How many entries to take from each lane, given how many wait in each (`left`).
local function shares(want, left)
  local take = {high = 0, normal = 0, low = 0}
  local busy = 0
  for _, lane in ipairs(LANES) do
    if left[lane] > 0 then busy = busy + 1 end
  end
  if busy == 1 then
    -- One lane has work, there is no share to keep.
    for _, lane in ipairs(LANES) do take[lane] = math.min(want, left[lane]) end
    return take
  end
  if busy == 0 then return take end
  local state = redis.call('HMGET', KEYS[8], 'normal', 'low')
  local credit = {normal = tonumber(state[1] or '0'), low = tonumber(state[2] or '0')}
  local share = {normal = tonumber(ARGV[3]), low = tonumber(ARGV[4])}
  for _ = 1, want do
    local pick
    for _, lane in ipairs({'low', 'normal'}) do
      if left[lane] > 0 then
        credit[lane] = credit[lane] + share[lane]
        if not pick and credit[lane] >= 100 then pick = lane end
      else
        -- An empty lane banks no more than one turn.
        credit[lane] = math.min(credit[lane], 100)
      end
    end
    if pick then
      credit[pick] = credit[pick] - 100
    else
      for _, lane in ipairs(LANES) do
        if not pick and left[lane] > 0 then pick = lane end
      end
    end
    if not pick then break end
    take[pick] = take[pick] + 1
    left[pick] = left[pick] - 1
  end
  redis.call('HSET', KEYS[8], 'normal', credit.normal, 'low', credit.low)
  return take
end

local got
if redis.call('EXISTS', KEYS[6], lanes.high, lanes.low) == 0 then
  -- The usual case, told by one command: nothing parked, no high or low work, so no
  -- share to keep and the normal lane is popped directly.
  got = redis.call('RPOP', lanes.normal, max) or {}
else
  got = redis.call('LRANGE', KEYS[6], 0, -1)
  if #got > 0 then redis.call('DEL', KEYS[6]) end
  local want = max - #got
  if want > 0 then
    local left = {}
    for _, lane in ipairs(LANES) do left[lane] = redis.call('LLEN', lanes[lane]) end
    local take = shares(want, left)
    for _, lane in ipairs(LANES) do
      if take[lane] > 0 then
        local popped = redis.call('RPOP', lanes[lane], take[lane])
        if popped then
          for i = 1, #popped do got[#got + 1] = popped[i] end
        end
      end
    end
  end
end
if #got == 0 then
  -- Nothing waits: tokens left from earlier pushes would only wake workers for nothing.
  redis.call('DEL', lanes.wake)
  return got
end
local fields = {}
for i = 1, #got do
  local entry = with_attempt(got[i], 1)
  got[i] = entry
  fields[#fields + 1] = entry
  fields[#fields + 1] = now
end
redis.call('HSET', KEYS[5], unpack(fields))
return got
