-- Dead-letter a task rejected in review: take it off the role's review index and add its
-- dead letter, at most once however often rejection is retried.
-- KEYS[1] review index zset, KEYS[2] dead letters hash, KEYS[3] dead letter index zset,
-- KEYS[4] stats hash
-- ARGV[1] task id (the job id), ARGV[2] dead letter record (JSON)
-- Returns 1 when dead-lettered, 0 when the task was not in the index.
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[3], now_ms(), ARGV[1])
redis.call('HINCRBY', KEYS[4], 'dead', 1)
return 1
