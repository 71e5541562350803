#!lua
-- A dead task's job was replayed: show it waiting again, unless it has moved on already.
-- KEYS[1] task record hash
-- ARGV[1] status to show, ARGV[2] now (ms)
-- Returns 1 when the status changed, 0 when the task was not dead (or is gone).
if redis.call('HGET', KEYS[1], 'status') ~= 'dead' then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'updated_at_ms', ARGV[2])
return 1
