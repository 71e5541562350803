-- A role finished a task's stage: write its output once.
-- KEYS[1] task record hash
-- ARGV[1] the output field, ARGV[2] its value, ARGV[3] status after this stage,
-- ARGV[4] record lifetime (ms), ARGV[5..] more field/value pairs (timings, usage, model)
-- A task already `done` is never changed again: its answer is written once.
-- Returns 1 when written, 0 when the task was already done, -1 when the record is gone.
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('HGET', KEYS[1], 'status') == 'done' then return 0 end
local fields = {ARGV[1], ARGV[2], 'status', ARGV[3]}
for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
