-- Re-enqueue dead letters, each at most once.
-- KEYS[1] dead letters hash, KEYS[2] dead letter index, KEYS[3..6] the lanes (high, normal,
-- low pending lists, wake list)
-- ARGV    pairs of (job id, entry to enqueue with its attempts reset)
-- A pair whose dead letter is gone (already replayed or purged) is skipped, so replaying
-- twice never enqueues twice.
-- Returns the ids replayed.
local done = {}
local entries = {}
for i = 1, #ARGV, 2 do
  if redis.call('HDEL', KEYS[1], ARGV[i]) == 1 then
    redis.call('ZREM', KEYS[2], ARGV[i])
    entries[#entries + 1] = ARGV[i + 1]
    done[#done + 1] = ARGV[i]
  end
end
push_to_lanes('LPUSH', lanes_at(3), entries)
return done
