-- A dead task's job was replayed: show it waiting again, unless it has moved on already.
-- KEYS[1] task record hash
-- ARGV[1] status to show (`queued` for a first-stage role, else `running`), ARGV[2] now
-- (ms), ARGV[3] the replayed role (its `dead` state is cleared: it is queued again)
-- Returns 1 when the status changed, 0 when the task was not dead (or is gone).
if redis.call('HGET', KEYS[1], 'status') ~= 'dead' then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'updated_at_ms', ARGV[2])
redis.call('HDEL', KEYS[1], ARGV[3] .. '.state')
return 1
