-- Push entries onto a role's pending list, skipping any whose idempotency key was seen.
-- KEYS[1]      pending list
-- KEYS[2..k+1] idempotency keys, one per entry, for the first k entries
-- ARGV[1]      idempotency key lifetime (ms)
-- ARGV[2..k+1] what each idempotency key holds: the id of the job it guards
-- ARGV[k+2..]  entries; entry i (1-based) is guarded by KEYS[i+1] when i <= k
-- Returns the number of entries pushed (the rest were duplicates).
local ttl = tonumber(ARGV[1])
local guarded = #KEYS - 1
local batch = {}
for i = guarded + 2, #ARGV do
  local n = i - guarded - 1
  if n > guarded or redis.call('SET', KEYS[n + 1], ARGV[n + 1], 'NX', 'PX', ttl) then
    batch[#batch + 1] = ARGV[i]
  end
end
if #batch > 0 then
  redis.call('LPUSH', KEYS[1], unpack(batch))
end
return #batch
