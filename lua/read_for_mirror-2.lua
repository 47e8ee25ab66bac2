-- read_for_mirror: a job's whole hash and whole history as ONE JSON string, for the
-- PostgreSQL mirror (one bulk reply per job: cheap to parse, however long the history).
-- KEYS[1] job hash   KEYS[2] history stream
-- returns false when the job is missing, else
--   cjson {hash as an object, [each history entry's fields as an object, oldest first]}
local rcall = redis.call
local flat = rcall('HGETALL', KEYS[1])
if #flat == 0 then return false end
local fields = {}
for i = 1, #flat, 2 do fields[flat[i]] = flat[i + 1] end
local history = {}
for i, entry in ipairs(rcall('XRANGE', KEYS[2], '-', '+')) do
  local e, raw = {}, entry[2]
  for j = 1, #raw, 2 do e[raw[j]] = raw[j + 1] end
  -- update_progress-2.lua's entries have no `at`: the id's ms is their time
  if e.at == nil then e.at = string.match(entry[1], '^%d+') end
  history[i] = e
end
return cjson.encode({fields, history})
