#!lua
-- Give back entries a live worker holds in Redis but not in memory (a fetch whose reply
-- was lost after it committed): they would otherwise wait for as long as the worker lives.
-- KEYS[1] the worker's in-flight hash, KEYS[2] pending list
-- ARGV    the entries, byte for byte as recorded in flight
-- The delivery is not counted against the job (it never ran), so the attempt prefix is
-- stepped back by one. An entry no longer held (settled or recovered meanwhile) is skipped.
-- Returns the number of entries given back.
local back = {}
for i = 1, #ARGV do
  local entry = ARGV[i]
  if redis.call('HDEL', KEYS[1], entry) == 1 then
    local n = string.match(entry, '^{"attempt":(%d+),')
    if n and tonumber(n) > 0 then
      entry = '{"attempt":' .. (tonumber(n) - 1) .. ',' .. string.sub(entry, #n + 13)
    end
    back[#back + 1] = entry
  end
end
for i = 1, #back, 1000 do
  redis.call('RPUSH', KEYS[2], unpack(back, i, math.min(i + 999, #back)))
end
return #back
