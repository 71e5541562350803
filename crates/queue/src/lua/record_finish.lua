-- A role finished its stage of a task: store its output once, and say whether the stage is
-- complete (every role of it done), so that exactly the completing writes chain the next.
-- KEYS[1] task record hash
-- ARGV[1] role, ARGV[2] output, ARGV[3] now (ms), ARGV[4] '1' when this is the last stage,
-- ARGV[5] record lifetime (ms) from now, applied when the task is done,
-- ARGV[6] n, the number of roles of this stage, ARGV[7..6+n] those roles,
-- ARGV[7+n..] more field/value pairs (timings, usage, model), stored with a new output only
-- Returns 'gone'; the status of a task already done, cancelled or expired (nothing
-- changes: a cancelled task's late output is not kept); 'dead' for a dead task
-- (the output is still stored, so that when the dead branch of this stage is replayed the
-- stage can complete, but nothing chains); 'waiting' (a parallel role of the stage has not
-- finished); or 'complete'. A re-run of a role that already finished gets 'complete' again
-- when the stage is: the next stage's push is guarded by an idempotency key, so completing
-- twice chains once.
local role = ARGV[1]
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'gone' end
if is_terminal(status) and status ~= 'dead' then return status end
local n = tonumber(ARGV[6])
local set = {role .. '.state', 'done', 'updated_at_ms', ARGV[3]}
if redis.call('HEXISTS', KEYS[1], role .. '.output') == 0 then
  set[#set + 1] = role .. '.output'
  set[#set + 1] = ARGV[2]
  set[#set + 1] = role .. '.finished_at_ms'
  set[#set + 1] = ARGV[3]
  for i = 7 + n, #ARGV do set[#set + 1] = ARGV[i] end
end
redis.call('HSET', KEYS[1], unpack(set))
if status == 'dead' then return status end
for i = 7, 6 + n do
  if ARGV[i] ~= role and redis.call('HGET', KEYS[1], ARGV[i] .. '.state') ~= 'done' then
    return 'waiting'
  end
end
if ARGV[4] == '1' then
  redis.call('HSET', KEYS[1], 'status', 'done')
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
end
return 'complete'
