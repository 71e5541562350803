-- Stop a task: `cancelled` (someone asked) or `expired` (its deadline passed while a stage
-- ran). Every worker reads the status before it starts a stage and after it finishes one,
-- so nothing more of the task runs and no later stage is enqueued.
-- KEYS[1] task record hash
-- ARGV[1] the status to set (`cancelled` or `expired`), ARGV[2] why (who asked, or the
-- deadline), ARGV[3] record lifetime (ms) from now
-- Returns the status the task had when it was already terminal (nothing changes), 'gone'
-- for a record that does not exist, else the status set.
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'gone' end
if is_terminal(status) then return status end
local now = now_ms()
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'stopped_at_ms', now, 'stop_reason', ARGV[2],
  'updated_at_ms', now)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return ARGV[1]
