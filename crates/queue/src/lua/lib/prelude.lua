-- Shared by every script (prepended at build time by scripts.rs).

-- Redis's time in ms: the only clock a lease, a heartbeat or a due time is compared on.
local function now_ms()
  local t = redis.call('TIME')
  return t[1] * 1000 + math.floor(t[2] / 1000)
end

-- The delivery count of an entry: its `{"attempt":N,` prefix (nil for garbage).
local function attempt_of(entry)
  return tonumber(string.match(entry, '^{"attempt":(%d+),') or '')
end

-- The entry with its delivery count moved by `delta` (never below 0); garbage unchanged.
local function with_attempt(entry, delta)
  local n = string.match(entry, '^{"attempt":(%d+),')
  if not n then return entry end
  local moved = math.max(0, tonumber(n) + delta)
  return '{"attempt":' .. moved .. ',' .. string.sub(entry, #n + 13)
end

-- RPUSH or LPUSH `items` onto `key`, 1,000 at a time (Lua's unpack has a stack limit).
local function push_all(command, key, items)
  for i = 1, #items, 1000 do
    redis.call(command, key, unpack(items, i, math.min(i + 999, #items)))
  end
end
