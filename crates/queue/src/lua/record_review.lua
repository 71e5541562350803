-- A guardrail parked a role's stage for review: note on the task record what waits.
-- KEYS[1] task record hash
-- ARGV[1] role, ARGV[2] the pending review (JSON), ARGV[3] the output waiting for approval
-- ('' for an input review), ARGV[4] now (ms), ARGV[5] record lifetime (ms) from now
-- Only a task in progress is parked (queued, running, or already parked for another role of
-- a parallel stage); the record then lives a full lifetime from now, so that it outlasts the
-- wait for a person. Returns 'review'; the task's status when it is not in progress (it is
-- left as it is); 'gone' when the record is.
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'gone' end
if status ~= 'queued' and status ~= 'running' and status ~= 'review' then return status end
local role = ARGV[1]
redis.call('HSET', KEYS[1], 'status', 'review', role .. '.state', 'review',
  role .. '.review', ARGV[2], 'updated_at_ms', ARGV[4])
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[1], role .. '.review_output', ARGV[3])
else
  redis.call('HDEL', KEYS[1], role .. '.review_output')
end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 'review'
