-- Give back entries a live worker holds in Redis but not in memory (a fetch whose reply
-- was lost after it committed): they would otherwise wait for as long as the worker lives.
-- KEYS[1] the worker's in-flight hash, KEYS[2..5] the lanes (high, normal, low pending
-- lists, wake list)
-- ARGV    the entries, byte for byte as recorded in flight
-- The delivery is not counted against the job (it never ran), so the attempt prefix is
-- stepped back by one. An entry no longer held (settled or recovered meanwhile) is skipped.
-- Returns the number of entries given back.
local back = {}
for i = 1, #ARGV do
  local entry = ARGV[i]
  if redis.call('HDEL', KEYS[1], entry) == 1 then
    back[#back + 1] = with_attempt(entry, -1)
  end
end
push_to_lanes('RPUSH', lanes_at(2), back)
return #back
