-- create_job: create a job in `pending`, unless it exists; or restore one the store lost.
-- KEYS[1] job hash   KEYS[2] history stream
-- ARGV[1] job_id   ARGV[2] paper_id   ARGV[3] pipeline   ARGV[4] steps (JSON array)
-- ARGV[5] the job's channel   ARGV[6] the all-jobs channel   ARGV[7] history MAXLEN
-- ARGV[8] seq floor: the job's first seq is floor + 1 (optional; absent or "" = 0, so 1;
--         at most 10^12).
--         A runner re-creating a job the store lost (Redis restarted empty) passes the
--         last seq it saw, so that readers, who drop any event not newer than what
--         they have shown, do not drop the re-created job's events.
-- ARGV[9] created_at_ms, ARGV[10] started_at_ms (optional; absent or "" = now, none):
--         the same runner carries the lost job's own times over (Redis-clock times it
--         read from the store before), so the job does not look newly created or
--         newly started. A started_at_ms makes the job's next move to `running`
--         keep it (update_progress-2.lua). Neither may lie in the future.
-- ARGV[11] status   ARGV[12] progress percent   ARGV[13] current step   ARGV[14] message
--         (optional; absent or "" = pending, 0, none, none; the message as "=" .. text):
--         the restore mode of that runner. The job is written, and its one event
--         published, already at the state it had (`running`, its step and percent),
--         never passing through pending/0: no event shows it moving back. A
--         `running` job without started_at_ms starts now; a `pending` one has
--         neither progress nor a step. A `running` one is stamped with a heartbeat:
--         its runner is alive, and a job started long ago is not failed as `worker
--         lost` (worker/lost.py) before the runner's next heartbeat.
-- ARGV[15] batch_id   ARGV[16] tags, a JSON array of labels (optional; absent or "" = none):
--         the batch the job belongs to and the labels given at submit, kept on the hash.
-- ARGV[17] attempt (optional; absent or "" = 1)   ARGV[18] retry_of, the job this one retries
--         (optional; absent or "" = none): a retry is a new job, attempt + 1.
-- ARGV[19] steps done (optional; absent or "" = 0): a retry of a resumable pipeline starts
--         `pending` with its first N steps completed and its bar at ARGV[12] (their share);
--         ARGV[14] says why (its history's first entry carries that message).
-- returns {created 0|1, seq, created_at_ms}
-- raises "INVALID <what>" on bad arguments, before anything is written.
local rcall = redis.call

if #KEYS ~= 2 or #ARGV < 7 or #ARGV > 19 then
  return redis.error_reply('INVALID create_job takes 2 keys and 7 to 19 arguments, got '
    .. #KEYS .. ' and ' .. #ARGV)
end
-- The ids go into event payloads unescaped (update_progress-2.lua): the documented pattern.
for i, name in ipairs({'job_id', 'paper_id'}) do
  local id = ARGV[i]
  if #id > 64 or not string.find(id, '^[A-Za-z0-9][A-Za-z0-9._%-]*$') then
    return redis.error_reply('INVALID ' .. name .. ' must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$, got ' .. id)
  end
end
local batch_id, tags = ARGV[15] or '', ARGV[16] or ''
if batch_id ~= '' and (#batch_id > 64 or not string.find(batch_id, '^[A-Za-z0-9][A-Za-z0-9._%-]*$')) then
  return redis.error_reply('INVALID batch_id must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$, got ' .. batch_id)
end
if tags ~= '' and string.byte(tags) ~= 91 then -- 91: '['
  return redis.error_reply('INVALID tags must be a JSON array')
end
local attempt, retry_of = ARGV[17] or '', ARGV[18] or ''
if attempt == '' then attempt = '1' end
if #attempt > 6 or not string.find(attempt, '^[1-9]%d*$') then
  return redis.error_reply('INVALID attempt must be a whole number from 1 to 999999, got ' .. attempt)
end
if retry_of ~= '' and (#retry_of > 64 or not string.find(retry_of, '^[A-Za-z0-9][A-Za-z0-9._%-]*$')) then
  return redis.error_reply('INVALID retry_of must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$, got ' .. retry_of)
end
if (attempt == '1') ~= (retry_of == '') then
  return redis.error_reply('INVALID a first attempt retries nothing; a later one names the job it retries')
end
if ARGV[5] == '' or ARGV[6] == '' then
  return redis.error_reply('INVALID the job\'s channel and the all-jobs channel must be named')
end
-- digits only (XADD, after the HSET, refuses "1e3"), at most 15: exact in a double
if #ARGV[7] > 15 or not string.find(ARGV[7], '^%d+$') or tonumber(ARGV[7]) < 1 then
  return redis.error_reply('INVALID history MAXLEN must be a whole number from 1 to 10^15 - 1, got ' .. ARGV[7])
end

if rcall('EXISTS', KEYS[1]) == 1 then
  return {0, tonumber(rcall('HGET', KEYS[1], 'seq')) or 0, tonumber(rcall('HGET', KEYS[1], 'created_at_ms')) or 0}
end
local ok, steps = pcall(cjson.decode, ARGV[4])
if not ok or type(steps) ~= 'table' or #steps == 0 then
  return redis.error_reply('INVALID steps must be a non-empty JSON array of names')
end
local floor = 0
if ARGV[8] ~= nil and ARGV[8] ~= '' then
  floor = tonumber(ARGV[8])
  -- at most 10^12: Lua prints a number with 14 digits, so a seq past 10^14 would
  -- reach the events' JSON rounded (and a double is exact only to 2^53)
  if floor == nil or floor < 0 or floor ~= math.floor(floor) or floor > 1e12 then
    return redis.error_reply('INVALID seq_floor must be a whole number from 0 to 10^12, got ' .. ARGV[8])
  end
end
local seq = floor + 1

local t = rcall('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function past_ms(raw, name)
  if raw == nil or raw == '' then return nil end
  local ms = tonumber(raw)
  if ms == nil or ms < 0 or ms ~= math.floor(ms) or ms > now then
    return false, redis.error_reply('INVALID ' .. name .. ' must be a whole number of ms, not in the future; got ' .. raw)
  end
  return ms
end
local created, bad = past_ms(ARGV[9], 'created_at_ms')
if created == false then return bad end
local started
started, bad = past_ms(ARGV[10], 'started_at_ms')
if started == false then return bad end
created = created or now

-- the restored state (ARGV[11..14]), checked before the first write
local status = ARGV[11] or ''
if status == '' then status = 'pending' end
if status ~= 'pending' and status ~= 'running' then
  return redis.error_reply('INVALID a job is created pending or restored running, not ' .. status)
end
local progress = 0
if ARGV[12] ~= nil and ARGV[12] ~= '' then
  progress = tonumber(ARGV[12])
  if progress == nil or progress ~= progress or progress < 0 or progress >= 100 then
    return redis.error_reply('INVALID a restored progress_percent must be a number from 0 to below 100, got ' .. ARGV[12])
  end
end
local step, done = ARGV[13] or '', 0
if step ~= '' then
  for i, name in ipairs(steps) do
    if name == step then done = i - 1 end
  end
  if steps[done + 1] ~= step then
    return redis.error_reply('INVALID current_step ' .. step .. ' is not one of the job\'s steps')
  end
end
local message = ARGV[14] or ''
if message ~= '' then
  if string.byte(message) ~= 61 then -- 61: '='
    return redis.error_reply('INVALID the message must be "" (none) or "=" followed by the text')
  end
  message = string.sub(message, 2)
end
local preset = ARGV[19] or ''
if preset ~= '' then
  if status ~= 'pending' or step ~= '' or not string.find(preset, '^%d+$') or tonumber(preset) >= #steps then
    return redis.error_reply('INVALID steps done must be a whole number below the number of steps, '
      .. 'for a pending job without a current step; got ' .. preset)
  end
  done = tonumber(preset)
end
if status == 'pending' and (step ~= '' or (progress > 0 and done == 0)) then
  return redis.error_reply('INVALID a pending job has no step, and no progress unless steps are done')
end
if status == 'running' and not started then started = now end
local done_json = '[]'
if done > 0 then
  local done_list = {}
  for i = 1, done do done_list[i] = steps[i] end
  done_json = cjson.encode(done_list)
end
local percent = tostring(progress)

rcall('DEL', KEYS[2])
rcall('HSET', KEYS[1], 'job_id', ARGV[1], 'paper_id', ARGV[2], 'pipeline', ARGV[3],
  'steps', ARGV[4], 'status', status, 'progress_percent', percent, 'current_step', step,
  'completed_count', done, 'completed_json', done_json, 'total_steps', #steps, 'message', message,
  'error', '', 'result', '', 'seq', seq, 'created_at_ms', created, 'progress_updated_at_ms', now)
if started then rcall('HSET', KEYS[1], 'started_at_ms', started) end
if batch_id ~= '' then rcall('HSET', KEYS[1], 'batch_id', batch_id) end
if tags ~= '' then rcall('HSET', KEYS[1], 'tags', tags) end
if status == 'running' then rcall('HSET', KEYS[1], 'heartbeat_at_ms', now) end
if attempt ~= '1' then rcall('HSET', KEYS[1], 'attempt', attempt, 'retry_of', retry_of) end
if done > 0 and status == 'pending' then
  -- a resumed retry: its first entry says which steps it starts with done, and why
  rcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[7], '*', 'seq', seq, 'at', now,
    'progress_percent', percent, 'current_step', step, 'status', status, 'message', message)
else
  rcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[7], '*', 'seq', seq, 'at', now,
    'progress_percent', percent, 'current_step', step, 'status', status)
end
local function jstr(text)
  if text == '' then return 'null' end
  return cjson.encode(text)
end
local payload = '{"job_id":' .. cjson.encode(ARGV[1]) .. ',"paper_id":' .. cjson.encode(ARGV[2])
  .. ',"seq":' .. seq .. ',"status":"' .. status .. '","progress_percent":' .. percent
  .. ',"current_step":' .. jstr(step) .. ',"completed_steps":' .. done_json
  .. ',"total_steps":' .. #steps .. ',"message":' .. jstr(message) .. ',"error":null,"result":null'
  .. ',"progress_updated_at_ms":' .. now .. ',"started_at_ms":' .. (started or 'null')
  .. ',"finished_at_ms":null,"attempt":' .. attempt .. ',"retry_of":' .. jstr(retry_of) .. '}'
rcall('PUBLISH', ARGV[5], payload)
rcall('PUBLISH', ARGV[6], payload)
return {1, seq, created}
