-- Helpers shared by the scripts: scripts.rs puts the ones a script uses before it, one block
-- (separated by a blank line) per name.

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

-- Terminal task statuses: no worker changes such a task again.
local function is_terminal(status)
  return status == 'done' or status == 'dead' or status == 'cancelled' or status == 'expired'
end

-- The priority lanes, highest first.
local LANES = {'high', 'normal', 'low'}

-- A queue's lane lists and wake list, passed as four consecutive KEYS from `first`:
-- high, normal, low pending lists, then the wake-up list.
local function lanes_at(first)
  return {high = KEYS[first], normal = KEYS[first + 1], low = KEYS[first + 2],
    wake = KEYS[first + 3]}
end

-- The lane of an entry: the `"lane":"…"` that follows its attempt prefix; normal when
-- absent (and for garbage).
local function lane_of(entry)
  local lane = string.match(entry, '^{"attempt":%d+,"lane":"(%a+)"')
  if lane == 'high' or lane == 'low' then return lane end
  return 'normal'
end

-- Wakes up to `n` idle workers: a blocking wait takes one token each. At most 64 tokens
-- wait at a time; a fetch that finds every lane empty clears them.
local function wake(lanes, n)
  if n <= 0 then return end
  local tokens = {}
  for i = 1, math.min(n, 64) do tokens[i] = '1' end
  if redis.call('LPUSH', lanes.wake, unpack(tokens)) > 64 then
    redis.call('LTRIM', lanes.wake, 0, 63)
  end
end

-- Pushes entries onto their lanes' lists (LPUSH: at the back of the line; RPUSH: at the
-- front, for entries that already waited) and wakes idle workers.
local function push_to_lanes(command, lanes, entries)
  if #entries == 0 then return end
  local by = {high = {}, normal = {}, low = {}}
  for i = 1, #entries do
    local list = by[lane_of(entries[i])]
    list[#list + 1] = entries[i]
  end
  for _, lane in ipairs(LANES) do push_all(command, lanes[lane], by[lane]) end
  wake(lanes, #entries)
end
