-- Delete dead letters by id.
-- KEYS[1] dead letters hash, KEYS[2] dead letter index
-- ARGV    job ids
-- Returns how many were deleted.
local n = redis.call('HDEL', KEYS[1], unpack(ARGV))
redis.call('ZREM', KEYS[2], unpack(ARGV))
return n
