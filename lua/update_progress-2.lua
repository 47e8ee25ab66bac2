-- update_progress: apply one progress update atomically (CONTRACT, "The update rules").
-- KEYS[1] job hash   KEYS[2] history stream
-- ARGV[1] progress percent   ARGV[2] step   ARGV[3] status     ("" keeps the stored value)
-- ARGV[4] message   ARGV[5] error   ARGV[6] result (a JSON object)
--         ("" keeps; "=" .. value sets; "=" alone clears)
-- ARGV[7] force "1" | "0"
-- ARGV[8] the job's channel   ARGV[9] the all-jobs channel
-- ARGV[10] history MAXLEN (approximate)   ARGV[11] TTL in seconds of a finished job
--         (counted from finished_at; it runs once the mirror holds the job: see the end;
--         each a whole number from 1 to 10^15 - 1, written in digits)
-- A percent is rounded to 6 decimals before anything else sees it (one precision, here
-- only): 0.1 + 0.2 is 0.3, and a percent within 0.0000005 of 100 is 100.
-- A result may nest objects and arrays at most 64 deep.
-- returns {accepted 0|1, reason, seq, status after the update}
--   reason: ok | unchanged | regression | terminal | not_found
-- raises "INVALID <what>" on invalid input (rule 5), and on arguments that break this
-- header (a caller other than ProgressStore); nothing is written then. Redis does not
-- undo the writes of a script that fails halfway, so every argument is checked
-- before the first write.
local rcall = redis.call

if #KEYS ~= 2 or #ARGV ~= 11 then
  return redis.error_reply('INVALID update_progress takes 2 keys and 11 arguments, got '
    .. #KEYS .. ' and ' .. #ARGV)
end
for i = 4, 6 do
  if ARGV[i] ~= '' and string.byte(ARGV[i]) ~= 61 then -- 61: '='
    return redis.error_reply('INVALID ARGV[' .. i .. '] must be "" (keep) or "=" followed by the value')
  end
end
if ARGV[7] ~= '0' and ARGV[7] ~= '1' then
  return redis.error_reply('INVALID force must be "1" or "0", got ' .. ARGV[7])
end
if ARGV[8] == '' or ARGV[9] == '' then
  return redis.error_reply('INVALID the job\'s channel and the all-jobs channel must be named')
end
for i = 10, 11 do
  -- digits only: XADD and EXPIRE, after the first write, refuse "1e3", " 5" or "0x10";
  -- and at most 15 of them, exact in a double.
  local raw = ARGV[i]
  if #raw > 15 or not string.find(raw, '^%d+$') or tonumber(raw) < 1 then
    return redis.error_reply('INVALID ' .. (i == 10 and 'history MAXLEN' or 'TTL') ..
      ' must be a whole number from 1 to 10^15 - 1, got ' .. raw)
  end
end
-- Redis >= 5 replicates a script by its effects, so reading TIME before the
-- writes is allowed without redis.replicate_commands().

local RANK = {pending = 0, running = 1, completed = 2, failed = 2, canceled = 2}

-- Not the steps: a percent-only update, the common case, needs none of them; steps()
-- reads them when a step is named or the job completes.
local cur = rcall('HMGET', KEYS[1], 'status', 'progress_percent', 'current_step',
  'completed_count', 'total_steps', 'message', 'error', 'result', 'seq', 'started_at_ms', 'job_id',
  'paper_id', 'finished_at_ms', 'completed_json')
-- rule 1: only an existing job (create_job always sets job_id)
if not cur[11] then
  return {0, 'not_found', 0}
end
local cur_status, cur_step = cur[1], cur[3] or ''
-- CONTRACT's percent precision: 6 decimals. Every percent is rounded here, the stored one
-- too (one written before this rule), so that comparing, completing at 100, storing and
-- publishing all see the same number. A whole number comes back as one (Lua >= 5.3
-- would print 40.0).
local function rounded(p)
  local r = math.floor(p * 1e6 + 0.5) / 1e6
  if r == math.floor(r) then return math.floor(r) end
  return r
end
local cur_progress = rounded(tonumber(cur[2]) or 0)
local cur_done = tonumber(cur[4]) or 0
local seq = tonumber(cur[9]) or 0
local steps_cache = nil
local function steps()
  if steps_cache == nil then steps_cache = cjson.decode(rcall('HGET', KEYS[1], 'steps')) end
  return steps_cache
end
local total_steps = tonumber(cur[5])
local force = ARGV[7] == '1'

-- rule 5: validation, before anything else and never lifted by force
local progress = nil
if ARGV[1] ~= '' then
  progress = tonumber(ARGV[1])
  if progress == nil or progress ~= progress or progress < 0 or progress > 100 then
    return redis.error_reply('INVALID progress_percent must be a number from 0 to 100, got ' .. ARGV[1])
  end
  progress = rounded(progress)
end
local status = nil
if ARGV[3] ~= '' then
  if RANK[ARGV[3]] == nil then
    return redis.error_reply('INVALID status must be one of pending, running, completed, failed, canceled; got ' .. ARGV[3])
  end
  status = ARGV[3]
end
local step, step_index = nil, nil
if ARGV[2] ~= '' then
  for i, name in ipairs(steps()) do
    if name == ARGV[2] then step_index = i end
  end
  if step_index == nil then
    return redis.error_reply('INVALID current_step ' .. ARGV[2] .. ' is not one of the job\'s steps')
  end
  step = ARGV[2]
end
local function optional(raw, stored)
  if raw == '' then return stored or '' end
  return string.sub(raw, 2)
end
local message = optional(ARGV[4], cur[6])
local err = optional(ARGV[5], cur[7])
local result = optional(ARGV[6], cur[8])
if result ~= '' and ARGV[6] ~= '' then
  -- Deeper than this, a reader's JSON decoder (Python's stops near 1,000 levels, less
  -- inside a web request) could fail on the job, and on every list that holds it.
  local MAX_RESULT_DEPTH = 64
  local function too_deep(value, left)
    if type(value) ~= 'table' then return false end
    if left == 0 then return true end
    for _, v in pairs(value) do
      if too_deep(v, left - 1) then return true end
    end
    return false
  end
  local ok, decoded = pcall(cjson.decode, result)
  if not ok or type(decoded) ~= 'table' then
    return redis.error_reply('INVALID result must be a JSON object')
  end
  if too_deep(decoded, MAX_RESULT_DEPTH) then
    return redis.error_reply('INVALID result must nest at most ' .. MAX_RESULT_DEPTH .. ' levels deep')
  end
end

-- rule 2: a finished job is final (unless forced)
if RANK[cur_status] == 2 and not force then
  return {0, 'terminal', seq, cur_status}
end

-- rule 3: nothing moves back (unless forced)
if not force then
  if progress ~= nil and progress < cur_progress then return {0, 'regression', seq, cur_status} end
  if step_index ~= nil and step_index <= cur_done then return {0, 'regression', seq, cur_status} end
  if status ~= nil and RANK[status] < RANK[cur_status] then return {0, 'regression', seq, cur_status} end
end

-- the new state
local new_status = status or cur_status
local new_progress = progress or cur_progress
local new_step, new_done = cur_step, cur_done
if step ~= nil then
  new_step, new_done = step, step_index - 1
end
if new_status == 'pending' and status == nil and (step ~= nil or new_progress > cur_progress) then
  new_status = 'running' -- work has begun; showing it as pending would be a lie
end
if new_status == 'running' and new_progress >= 100 then
  new_status = 'completed' -- rule 6
end
if new_status == 'completed' then
  new_progress, new_step, new_done = 100, '', #steps()
end

local t = rcall('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- rule 8: nothing changed
if new_status == cur_status and new_progress == cur_progress and new_step == cur_step
    and new_done == cur_done and message == (cur[6] or '') and err == (cur[7] or '')
    and result == (cur[8] or '') then
  rcall('HSET', KEYS[1], 'progress_updated_at_ms', now)
  return {1, 'unchanged', seq, cur_status}
end

-- rules 7 and 9
seq = seq + 1
-- Each number turned into text once, for the hash, the history and the event (a number
-- given to redis.call, or joined with .., is formatted again every time).
local percent, seq_s, now_s, total_s = tostring(new_progress), tostring(seq), tostring(now), cur[5]
local fields = {'progress_percent', percent, 'seq', seq_s, 'progress_updated_at_ms', now_s}
local function set(name, value) fields[#fields + 1] = name; fields[#fields + 1] = value end
if new_status ~= cur_status then set('status', new_status) end
if new_step ~= cur_step then
  set('current_step', new_step)
  set('step_started_ms', now_s) -- when the current step began: the ETA's time in the step
end
if message ~= (cur[6] or '') then set('message', message) end
if err ~= (cur[7] or '') then set('error', err) end
if result ~= (cur[8] or '') then set('result', result) end
local done_json = cur[14]
if new_done ~= cur_done or done_json == nil or total_steps == nil then
  local done_list = {}
  for i = 1, new_done do done_list[i] = steps()[i] end
  done_json = '[]'
  if new_done > 0 then done_json = cjson.encode(done_list) end
  total_steps = #steps()
  total_s = tostring(total_steps)
  set('completed_count', new_done); set('completed_json', done_json); set('total_steps', total_steps)
end
local started = cur[10] or ''
-- A pending job with a start time is one create_job restored (a runner re-creating a
-- job Redis lost): it keeps that time.
if new_status == 'running' and cur_status ~= 'running' and not (cur_status == 'pending' and started ~= '') then
  started = now_s
  set('started_at_ms', now_s)
end
local finished = cur[13] or ''
local terminal = RANK[new_status] == 2
if terminal and RANK[cur_status] ~= 2 then
  finished = now_s
  set('finished_at_ms', now_s)
elseif not terminal and RANK[cur_status] == 2 then
  finished = '' -- forced back to life
  set('finished_at_ms', '')
end
rcall('HSET', KEYS[1], unpack(fields))
rcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[10], '*', 'seq', seq_s, 'at', now_s,
  'progress_percent', percent, 'current_step', new_step, 'status', new_status)

local function jstr(s)
  if s == nil or s == '' then return 'null' end
  return cjson.encode(s)
end
local function jnum(s)
  if s == nil or s == '' then return 'null' end
  return tostring(s)
end
-- job_id and paper_id were checked against the id pattern by create_job, and
-- the status is one of five words: none needs JSON escaping.
local payload = '{"job_id":"' .. cur[11] .. '","paper_id":"' .. cur[12]
  .. '","seq":' .. seq_s .. ',"status":"' .. new_status .. '"'
  .. ',"progress_percent":' .. percent
  .. ',"current_step":' .. jstr(new_step) .. ',"completed_steps":' .. done_json
  .. ',"total_steps":' .. total_s
  .. ',"message":' .. jstr(message) .. ',"error":' .. jstr(err)
  .. ',"result":' .. (result ~= '' and result or 'null')
  .. ',"progress_updated_at_ms":' .. now_s
  .. ',"started_at_ms":' .. jnum(started) .. ',"finished_at_ms":' .. jnum(finished) .. '}'
rcall('PUBLISH', ARGV[8], payload)
rcall('PUBLISH', ARGV[9], payload)

-- Rule 9's TTL: a finished job expires ARGV[11] seconds after it finished, but never
-- before the PostgreSQL mirror holds it. So the time is written down here and the keys
-- are made persistent; expire_mirrored sets the expiry once the job's row has landed.
-- (A job forced back to life, or to another ending, waits again the same way.)
if terminal then
  rcall('HSET', KEYS[1], 'expires_at_ms', now + tonumber(ARGV[11]) * 1000)
end
if terminal or RANK[cur_status] == 2 then
  rcall('PERSIST', KEYS[1])
  rcall('PERSIST', KEYS[2])
end
return {1, 'ok', seq, new_status}
