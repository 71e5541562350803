#!lua
-- A role starts work on a task: note it on the task record, and say what is already there.
-- KEYS[1] task record hash
-- ARGV[1] role, ARGV[2] attempt, ARGV[3] worker id, ARGV[4] now (ms), ARGV[5] status to
-- show while this role works, ARGV[6] the record field this role writes its output to
-- Returns {status before, existing output or false}. A record that is gone (expired or
-- never created) is left absent and reported as {false, false}. A task in a terminal state
-- (`done`, `dead`) is not touched: a re-delivered copy of one of its jobs never brings it
-- back (only `dlq replay` leaves `dead`, through record_requeue.lua).
local cur = redis.call('HMGET', KEYS[1], 'status', ARGV[6])
if not cur[1] then return {false, false} end
if cur[1] == 'done' or cur[1] == 'dead' then return cur end
local role = ARGV[1]
redis.call('HSET', KEYS[1],
  role .. '.attempts', ARGV[2],
  role .. '.worker_id', ARGV[3],
  role .. '.started_at_ms', ARGV[4],
  'updated_at_ms', ARGV[4],
  'status', ARGV[5])
return cur
