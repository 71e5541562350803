-- A task's job was dead-lettered: show the task dead with the reason, naming the role.
-- KEYS[1] task record hash
-- ARGV[1] reason, ARGV[2] role, ARGV[3] attempts, ARGV[4] now (ms), ARGV[5] record lifetime
-- (ms)
-- A `done`, `cancelled` or `expired` task stays so (a late copy of one of its jobs may die
-- after the task ended); a record that is gone is not resurrected as a stub.
-- Returns 1 when marked, 0 when the task had ended otherwise, -1 when the record is gone.
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return -1 end
if is_terminal(status) and status ~= 'dead' then return 0 end
local role = ARGV[2]
redis.call('HSET', KEYS[1], 'status', 'dead', 'last_error', ARGV[1],
  role .. '.state', 'dead', role .. '.attempts', ARGV[3], 'updated_at_ms', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
