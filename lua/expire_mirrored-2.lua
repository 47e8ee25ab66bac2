-- expire_mirrored: a finished job's row has landed in PostgreSQL; now let it expire.
-- update_progress writes down when a finished job expires (expires_at_ms: finished_at
-- + PROGRESS_JOB_TTL) but keeps it persistent until the mirror holds it, so that no
-- finished job leaves Redis unmirrored.
-- KEYS[1] job hash   KEYS[2] history stream
-- ARGV[1] the seq PostgreSQL now holds   ARGV[2] the TTL in seconds (for a job finished
--         before expires_at_ms existed: counted from its finished_at)
-- returns 'expiring' (its expiry is set), 'changed' (finished again with a newer seq since:
--   mirror it again), 'running' (forced back to life: nothing to do) or 'gone'
local rcall = redis.call
local cur = rcall('HMGET', KEYS[1], 'status', 'seq', 'expires_at_ms', 'finished_at_ms')
if not cur[1] then return 'gone' end
if cur[1] ~= 'completed' and cur[1] ~= 'failed' and cur[1] ~= 'canceled' then
  return 'running'
end
if tonumber(cur[2]) ~= tonumber(ARGV[1]) then return 'changed' end
local at = tonumber(cur[3])
if at == nil then
  local t = rcall('TIME')
  at = (tonumber(cur[4]) or tonumber(t[1]) * 1000) + tonumber(ARGV[2]) * 1000
end
-- An expiry already past deletes the keys at once: PostgreSQL answers for the job now.
rcall('PEXPIREAT', KEYS[1], at)
rcall('PEXPIREAT', KEYS[2], at)
return 'expiring'
