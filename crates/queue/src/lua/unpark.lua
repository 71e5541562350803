-- Resume a task approved in review: take it off the role's review index and queue its job
-- in its lane, at most once however often approval is retried.
-- KEYS[1] review index zset, KEYS[2..5] the lanes (high, normal, low pending lists, wake
-- list)
-- ARGV[1] task id, ARGV[2] the entry to run
-- The entry goes to the consuming end of its lane (it has waited longest), like a recovered
-- one, and wakes an idle worker.
-- Returns 1 when queued, 0 when the task was not in the index (already resumed).
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
push_to_lanes('RPUSH', lanes_at(2), {ARGV[2]})
return 1
