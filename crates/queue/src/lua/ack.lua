-- Finish entries that succeeded.
-- KEYS[1] the worker's in-flight hash, KEYS[2] stats hash
-- ARGV    the entries, byte for byte as fetch.lua returned them
-- Returns how many were still held (fewer means the lease was lost and another worker
-- re-ran or is re-running them: at-least-once, never zero).
local removed = redis.call('HDEL', KEYS[1], unpack(ARGV))
if removed > 0 then redis.call('HINCRBY', KEYS[2], 'succeeded', removed) end
return removed
