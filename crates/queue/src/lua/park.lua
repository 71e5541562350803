-- Park a fetched entry for review: it leaves the worker's in-flight hash (the job is settled
-- and holds no slot) and its task joins the role's review index. The task record already
-- says what waits (record_review.lua ran first), so a crash between the two re-delivers the
-- entry, whose worker finds the record parked and parks it again: nothing is lost.
-- KEYS[1] the worker's in-flight hash, KEYS[2] review index zset, KEYS[3] stats hash
-- ARGV[1] the entry as fetched, ARGV[2] task id
-- The index is scored by Redis's clock (the review gauges and expiry compare against it);
-- a task parked again keeps its first time (NX).
-- Returns 1, or 0 when this worker no longer held the entry (see retry.lua).
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZADD', KEYS[2], 'NX', now_ms(), ARGV[2])
redis.call('HINCRBY', KEYS[3], 'parked', 1)
return 1
