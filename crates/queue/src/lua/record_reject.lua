-- A person rejected a role's stage parked for review: the task is dead, with the reason.
-- KEYS[1] task record hash
-- ARGV[1] role, ARGV[2] the decision (JSON, appended to `reviews`), ARGV[3] the reason
-- (`last_error`), ARGV[4] now (ms), ARGV[5] record lifetime (ms) from now
-- Returns 'rejected'; 'already' when the task is dead with this role (the caller only asks
-- while the task is in the role's review index: a rejection whose dead letter was not
-- written yet, which the caller then writes, at most once); 'not_waiting' when the role is
-- not parked; the task's status when it is not in progress; 'gone'.
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'gone' end
local role = ARGV[1]
local state = redis.call('HGET', KEYS[1], role .. '.state')
if status == 'dead' and state == 'dead' then return 'already' end
if status ~= 'queued' and status ~= 'running' and status ~= 'review' then return status end
if state ~= 'review' then return 'not_waiting' end
local log = redis.call('HGET', KEYS[1], 'reviews')
if log and string.sub(log, -1) == ']' and log ~= '[]' then
  log = string.sub(log, 1, -2) .. ',' .. ARGV[2] .. ']'
else
  log = '[' .. ARGV[2] .. ']'
end
redis.call('HDEL', KEYS[1], role .. '.review', role .. '.review_output')
redis.call('HSET', KEYS[1], 'status', 'dead', 'last_error', ARGV[3], role .. '.state', 'dead',
  'reviews', log, 'updated_at_ms', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 'rejected'
