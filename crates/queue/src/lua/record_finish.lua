-- A role finished its stage of a task: store its output once, and say whether the stage is
-- complete (every role of it done), so that exactly the completing writes chain the next.
-- Most stages never ran record_start.lua (a plain read started them, see
-- TaskStore::read_stage), so this also writes what the start would have: the task is
-- `running`, its stage moves forward (to the next stage when this one completes), and the
-- role's attempt, worker and start time come with its output.
-- KEYS[1] task record hash
-- ARGV[1] role, ARGV[2] output, ARGV[3] now (ms), ARGV[4] '1' when this is the last stage,
-- ARGV[5] record lifetime (ms) from now, applied when the task is done,
-- ARGV[6] this stage's index, ARGV[7] n, the number of roles of this stage,
-- ARGV[8..7+n] those roles, ARGV[8+n..] more field/value pairs (attempt, worker, timings,
-- usage, model), stored with a new output only
-- Returns 'gone'; the status of a task already done, cancelled or expired (nothing
-- changes: a cancelled task's late output is not kept); 'dead' for a dead task
-- (the output is still stored, so that when the dead branch of this stage is replayed the
-- stage can complete, but nothing chains); 'waiting' (a parallel role of the stage has not
-- finished); or 'complete'. A re-run of a role that already finished gets 'complete' again
-- when the stage is: the next stage's push is guarded by an idempotency key, so completing
-- twice chains once.
local role = ARGV[1]
local n = tonumber(ARGV[7])
local fields = {'status', 'stage', role .. '.state'}
for i = 8, 7 + n do
  if ARGV[i] ~= role then fields[#fields + 1] = ARGV[i] .. '.state' end
end
local cur = redis.call('HMGET', KEYS[1], unpack(fields))
local status = cur[1]
if not status then return 'gone' end
if is_terminal(status) and status ~= 'dead' then return status end
local set = {role .. '.state', 'done', 'updated_at_ms', ARGV[3]}
-- A role whose state is `done` has stored its output (both are written here, together);
-- an output stored otherwise (an approved answer) is kept too.
if cur[3] ~= 'done' and redis.call('HEXISTS', KEYS[1], role .. '.output') == 0 then
  set[#set + 1] = role .. '.output'
  set[#set + 1] = ARGV[2]
  set[#set + 1] = role .. '.finished_at_ms'
  set[#set + 1] = ARGV[3]
  for i = 8 + n, #ARGV do set[#set + 1] = ARGV[i] end
end
if status == 'dead' then
  redis.call('HSET', KEYS[1], unpack(set))
  return status
end
local complete = true
for i = 4, #cur do
  if cur[i] ~= 'done' then complete = false end
end
-- The stage only moves forward: to the next stage once this one is complete.
local stage = tonumber(ARGV[6])
if complete and ARGV[4] ~= '1' then stage = stage + 1 end
if stage > tonumber(cur[2] or '-1') then
  set[#set + 1] = 'stage'
  set[#set + 1] = stage
end
if not complete then
  -- A parallel role parked for review keeps the task `review`.
  if status == 'queued' then
    set[#set + 1] = 'status'
    set[#set + 1] = 'running'
  end
  redis.call('HSET', KEYS[1], unpack(set))
  return 'waiting'
end
if ARGV[4] == '1' then
  set[#set + 1] = 'status'
  set[#set + 1] = 'done'
  redis.call('HSET', KEYS[1], unpack(set))
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
elseif status ~= 'review' then
  set[#set + 1] = 'status'
  set[#set + 1] = 'running'
  redis.call('HSET', KEYS[1], unpack(set))
else
  redis.call('HSET', KEYS[1], unpack(set))
end
return 'complete'
