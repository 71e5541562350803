#!lua
-- A role finished a task's stage: write its output once.
-- KEYS[1] task record hash
-- ARGV[1] the output field, ARGV[2] its value, ARGV[3] status after this stage,
-- ARGV[4] new record lifetime (ms), or 0 to keep the one set at enqueue,
-- ARGV[5..] more field/value pairs (timings, usage, model)
-- A task in a terminal state (`done`, `dead`) is never changed again: its answer is
-- written once, and a dead task stays dead until its dead letter is replayed.
-- Returns 1 when written, 0 when the task was already terminal, -1 when the record is gone.
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return -1 end
if status == 'done' or status == 'dead' then return 0 end
local fields = {ARGV[1], ARGV[2], 'status', ARGV[3]}
for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
if ARGV[4] ~= '0' then redis.call('PEXPIRE', KEYS[1], ARGV[4]) end
return 1
