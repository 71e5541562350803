-- A role starts work on a task: note it on the task record, and return what the role
-- works from.
-- KEYS[1] task record hash
-- ARGV[1] role, ARGV[2] attempt, ARGV[3] worker id, ARGV[4] now (ms), ARGV[5] the role's
-- stage index, ARGV[6] record lifetime (ms) once the task expires, ARGV[7..] the roles whose
-- outputs it reads (the stage before)
-- Returns {status, stage, prompt, metadata, own output, ms left until the deadline, input 1,
-- ...} (absent fields as nil). A record that is gone is left absent: {} . A task in a
-- terminal state (`done`, `dead`, `cancelled`, `expired`) is not touched and only its
-- status is returned: a re-delivered copy of one of its jobs never brings it back (only
-- `dlq replay` leaves `dead`, through record_requeue.lua). A task whose deadline has passed
-- (by Redis's clock) becomes `expired` here, before any work starts. Nor is a task whose
-- stage at this role is parked for review touched ({'review'}): only a person's decision
-- moves it (record_approve.lua, record_reject.lua).
local role = ARGV[1]
local fields = {'status', 'stage', 'prompt', 'metadata', role .. '.output', 'deadline_ms'}
for i = 7, #ARGV do fields[#fields + 1] = ARGV[i] .. '.output' end
local cur = redis.call('HMGET', KEYS[1], unpack(fields))
if not cur[1] then return {} end
if is_terminal(cur[1]) then return {cur[1]} end
if cur[1] == 'review' and redis.call('HGET', KEYS[1], role .. '.state') == 'review' then
  return {cur[1]}
end
if cur[6] then
  local now = now_ms()
  local left = tonumber(cur[6]) - now
  if left <= 0 then
    redis.call('HSET', KEYS[1], 'status', 'expired', 'stopped_at_ms', now,
      'stop_reason', 'deadline passed before ' .. role .. ' started', 'updated_at_ms', now)
    redis.call('PEXPIRE', KEYS[1], ARGV[6])
    return {'expired'}
  end
  cur[6] = tostring(left)
end
local set = {
  role .. '.attempts', ARGV[2],
  role .. '.worker_id', ARGV[3],
  role .. '.started_at_ms', ARGV[4],
  'updated_at_ms', ARGV[4],
}
-- A parallel role parked for review keeps the task `review` while this one runs.
if cur[1] ~= 'review' then
  set[#set + 1] = 'status'
  set[#set + 1] = 'running'
end
-- A role whose output is stored is done; a re-run only reuses that output.
if not cur[5] then
  set[#set + 1] = role .. '.state'
  set[#set + 1] = 'running'
end
-- The task's stage only moves forward (a late copy of an earlier stage does not move it).
if tonumber(ARGV[5]) > tonumber(cur[2] or '-1') then
  set[#set + 1] = 'stage'
  set[#set + 1] = ARGV[5]
end
redis.call('HSET', KEYS[1], unpack(set))
return cur
