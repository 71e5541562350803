-- A person approved a role's stage parked for review: the stage resumes where it stopped.
-- An output review's answer becomes the role's output (stored once, as record_finish.lua
-- would: the resumed job reuses it and chains the next stage, the model is not called
-- again); an input review's rules are noted as approved (the resumed job skips them).
-- KEYS[1] task record hash
-- ARGV[1] role, ARGV[2] the decision (JSON, appended to `reviews`), ARGV[3] the approved
-- input rules (JSON list; '' for an output review), ARGV[4] now (ms), ARGV[5..] every role
-- of the stage (the task stays `review` while another of them waits)
-- Returns 'approved'; 'already' when this role was approved before (its job may not have
-- been queued yet: the caller queues it, at most once); 'not_waiting' when the role is not
-- parked; the task's status when it is not in progress; 'gone'.
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'gone' end
if status ~= 'queued' and status ~= 'running' and status ~= 'review' then return status end
local role = ARGV[1]
local state = redis.call('HGET', KEYS[1], role .. '.state')
if state == 'approved' then return 'already' end
if state ~= 'review' then return 'not_waiting' end
local output = redis.call('HGET', KEYS[1], role .. '.review_output')
if output and redis.call('HEXISTS', KEYS[1], role .. '.output') == 0 then
  redis.call('HSET', KEYS[1], role .. '.output', output, role .. '.finished_at_ms', ARGV[4])
end
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], role .. '.approved', ARGV[3]) end
redis.call('HDEL', KEYS[1], role .. '.review', role .. '.review_output')
local log = redis.call('HGET', KEYS[1], 'reviews')
if log and string.sub(log, -1) == ']' and log ~= '[]' then
  log = string.sub(log, 1, -2) .. ',' .. ARGV[2] .. ']'
else
  log = '[' .. ARGV[2] .. ']'
end
local still = false
for i = 5, #ARGV do
  if ARGV[i] ~= role and redis.call('HGET', KEYS[1], ARGV[i] .. '.state') == 'review' then
    still = true
  end
end
redis.call('HSET', KEYS[1], role .. '.state', 'approved', 'reviews', log, 'updated_at_ms', ARGV[4])
if not still then redis.call('HSET', KEYS[1], 'status', 'running') end
return 'approved'
