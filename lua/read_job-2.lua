-- read_job: a job's hash, the server's clock and its ETA's starting point, in one round trip.
-- KEYS[1] job hash   KEYS[2] history stream
-- ARGV[1] how many of the newest history entries the ETA looks back over
-- returns {hash as a JSON array [field, value, ...], seconds, microseconds, entries}
--   (one JSON string, not a flat list: redis-py parses a RESP reply value by value in
--   Python, json.loads does the whole hash in C)
--   entries: the oldest `running` entry among those newest ARGV[1], as XREVRANGE
--   shapes it ({{id, {field, value, ...}}}), or none. The ETA needs that one entry
--   only; returning the whole window made every read parse ~200 more values.
local rcall = redis.call
local t = rcall('TIME')
local fields = rcall('HGETALL', KEYS[1])
local recent = {}
if #fields > 0 and tonumber(ARGV[1]) > 0 then
  local window = rcall('XREVRANGE', KEYS[2], '+', '-', 'COUNT', ARGV[1])
  for i = #window, 1, -1 do -- oldest first
    local entry = window[i]
    local f = entry[2]
    local status, at, progress = nil, nil, nil
    for j = 1, #f, 2 do
      if f[j] == 'status' then status = f[j + 1]
      elseif f[j] == 'at' then at = f[j + 1]
      elseif f[j] == 'progress_percent' then progress = f[j + 1] end
    end
    if status == 'running' then
      recent = {{entry[1], {'at', at, 'progress_percent', progress, 'status', status}}}
      break
    end
  end
end
if #fields == 0 then
  return {'[]', t[1], t[2], recent}
end
return {cjson.encode(fields), t[1], t[2], recent}
