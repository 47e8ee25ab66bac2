-- read_job: a job's hash, the server's clock and its ETA's starting point, in one round trip.
-- KEYS[1] job hash   KEYS[2] history stream
-- ARGV[1] the ETA's window in milliseconds (0: no ETA point)
-- returns {hash as a JSON array [field, value, ...], seconds, microseconds, at, progress}
--   (one JSON string, not a flat list: redis-py parses a RESP reply value by value in
--   Python, json.loads does the whole hash in C)
--   at, progress: the ETA's starting point (the entry's `at` ms and percent), or "", "":
--   the oldest `running` entry of the last ARGV[1] ms. When the window holds
--   none (the job has not moved for that long), the oldest `running` one of the newest
--   three, so that a stalled job's ETA grows instead of freezing.
--   Only a few entries are read either way: the history is a stream whose ids are
--   Redis-clock milliseconds, so XRANGE seeks to the window's start. (Reading the
--   newest 20 entries and picking among them cost ~28 of this script's ~35 us.)
local rcall = redis.call
local t = rcall('TIME')
local fields = rcall('HGETALL', KEYS[1])
if #fields == 0 then
  return {'[]', t[1], t[2], '', ''}
end

local function first_running(entries)
  for _, entry in ipairs(entries) do
    local f = entry[2]
    local status, at, progress = nil, nil, nil
    for j = 1, #f, 2 do
      if f[j] == 'status' then status = f[j + 1]
      elseif f[j] == 'at' then at = f[j + 1]
      elseif f[j] == 'progress_percent' then progress = f[j + 1] end
    end
    if status == 'running' then
      -- update_progress-2.lua's entries have no `at`: the id's ms is their time
      return {at or string.match(entry[1], '^%d+'), progress}
    end
  end
  return nil
end

local recent = nil
local window = tonumber(ARGV[1]) or 0
if window ~= math.floor(window) or window > 1e15 then
  return redis.error_reply('INVALID the ETA window must be a whole number of ms, got ' .. ARGV[1])
end
if window > 0 then
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  recent = first_running(rcall('XRANGE', KEYS[2], math.max(0, now - window), '+', 'COUNT', 3))
  if recent == nil then
    local newest = rcall('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 3)
    local oldest_first = {}
    for i = #newest, 1, -1 do oldest_first[#oldest_first + 1] = newest[i] end
    recent = first_running(oldest_first)
  end
end
recent = recent or {'', ''}
return {cjson.encode(fields), t[1], t[2], recent[1], recent[2]}
