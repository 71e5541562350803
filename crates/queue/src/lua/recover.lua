-- Take back every entry held by a worker whose heartbeat is older than the lease.
-- KEYS[1] workers zset, KEYS[2] that worker's in-flight hash, KEYS[3] its claim list,
-- KEYS[4..7] the lanes (high, normal, low pending lists, wake list), KEYS[8] dead letters
-- hash, KEYS[9] dead letter index, KEYS[10] stats
-- ARGV[1] worker id, ARGV[2] lease (ms), ARGV[3] max attempts, ARGV[4] role,
-- ARGV[5] the recovering worker's id
-- The lease is compared on Redis's clock (TIME), the only one every worker shares.
-- An entry whose delivery count has reached max attempts is dead-lettered (class "crash"):
-- a job that kills every worker that runs it ends there instead of looping.
-- Returns {requeued, dead count, dead job id, ..., requeued job id, ...}, or {-1} when the worker is alive after all (or is
-- the one asking).
if ARGV[1] == ARGV[5] then return {-1} end
local now = now_ms()
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) >= now - tonumber(ARGV[2]) then return {-1} end
local max = tonumber(ARGV[3])
local requeue = {}
local dead = {}
local parked = redis.call('LRANGE', KEYS[3], 0, -1)
for i = 1, #parked do requeue[#requeue + 1] = parked[i] end
local held = redis.call('HKEYS', KEYS[2])
for i = 1, #held do
  local entry = held[i]
  local n = attempt_of(entry)
  if n and n < max then
    requeue[#requeue + 1] = entry
  else
    local id = string.match(entry, '"id":"([^"]*)"') or ('unreadable-' .. redis.sha1hex(entry))
    local record = cjson.encode({
      job_id = id,
      role = ARGV[4],
      payload = entry,
      error_class = 'crash',
      error = 'worker ' .. ARGV[1] .. ' stopped heartbeating while running this job, on delivery ' .. tostring(n or max) .. ' of ' .. max,
      attempts = n or max,
      first_failed_at_ms = now,
      last_failed_at_ms = now,
      worker_id = ARGV[1],
      dead_at_ms = now,
    })
    redis.call('HSET', KEYS[8], id, record)
    redis.call('ZADD', KEYS[9], now, id)
    dead[#dead + 1] = id
  end
end
-- Recovered entries go to the consuming end: they have waited longest.
push_to_lanes('RPUSH', lanes_at(4), requeue)
if #dead > 0 then redis.call('HINCRBY', KEYS[10], 'dead', #dead) end
redis.call('HINCRBY', KEYS[10], 'recovered', #requeue)
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('ZREM', KEYS[1], ARGV[1])
local out = {#requeue, #dead}
for i = 1, #dead do out[#out + 1] = dead[i] end
for i = 1, #requeue do
  out[#out + 1] = string.match(requeue[i], '"id":"([^"]*)"') or ''
end
return out
