-- Push entries onto a role's queue, skipping any whose idempotency key was seen.
-- KEYS[1..4]   the lanes: high, normal, low pending lists, wake list
-- KEYS[5]      scheduled zset
-- KEYS[6..k+5] idempotency keys, one per entry, for the first k entries
-- ARGV[1]      idempotency key lifetime (ms)
-- ARGV[2..k+1] what each idempotency key holds: the id of the job it guards
-- ARGV[k+2..]  pairs (due, entry): due 0 runs now (the entry goes to its lane's list);
--              otherwise it waits in the scheduled set until then (ms, Redis's clock).
--              Pair i (1-based) is guarded by KEYS[i+5] when i <= k.
-- Returns the number of entries pushed (the rest were duplicates).
local lanes = lanes_at(1)
local ttl = tonumber(ARGV[1])
local guarded = #KEYS - 5
local now_batch = {}
local pushed = 0
local n = 0
for i = guarded + 2, #ARGV, 2 do
  n = n + 1
  if n > guarded or redis.call('SET', KEYS[n + 5], ARGV[n + 1], 'NX', 'PX', ttl) then
    local due = tonumber(ARGV[i])
    if due > 0 then
      redis.call('ZADD', KEYS[5], due, ARGV[i + 1])
    else
      now_batch[#now_batch + 1] = ARGV[i + 1]
    end
    pushed = pushed + 1
  end
end
push_to_lanes('LPUSH', lanes, now_batch)
return pushed
