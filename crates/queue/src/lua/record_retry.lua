-- A role's attempt failed and another is scheduled: note it on the task record as history.
-- KEYS[1] task record hash
-- ARGV[1] role, ARGV[2] the error, ARGV[3] when the next attempt is due (ms, the worker's
-- clock: shown, never compared), ARGV[4] now (ms)
-- A terminal or vanished task is left as it is. Returns 1 when noted, else 0.
local status = redis.call('HGET', KEYS[1], 'status')
if not status or is_terminal(status) then return 0 end
local role = ARGV[1]
redis.call('HSET', KEYS[1], role .. '.state', 'retrying', role .. '.retry_at_ms', ARGV[3],
  role .. '.last_error', ARGV[2], 'updated_at_ms', ARGV[4])
return 1
