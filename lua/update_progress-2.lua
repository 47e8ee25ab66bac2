-- update_progress: apply one progress update atomically (README, "The update rules").
-- KEYS[1] job hash   KEYS[2] history stream
-- ARGV[1] the job's channel   ARGV[2] the all-jobs channel
-- ARGV[3] history MAXLEN (approximate)   ARGV[4] TTL in seconds of a finished job
--         (counted from finished_at; it runs once the mirror holds the job: see the end;
--         each a whole number from 1 to 10^15 - 1, written in digits)
-- ARGV[5] progress percent   ARGV[6] step   ARGV[7] status     ("" keeps the stored value)
-- ARGV[8] message   ARGV[9] error   ARGV[10] result (a JSON object)
--         ("" keeps; "=" .. value sets; "=" alone clears)
-- ARGV[11] force "1" | "0"
-- The ones after ARGV[5] may be left off at the end: absent is "" (force "0"). A
-- percent-only update sends five (every argument costs the client and the server).
-- A percent is rounded to 6 decimals before anything else sees it (one precision, here
-- only): 0.1 + 0.2 is 0.3, and a percent within 0.0000005 of 100 is 100.
-- A result may nest objects and arrays at most 64 deep.
-- returns "<reason> <seq> <status after the update>" (one string: a table reply costs the
--   server more than the rest of a percent-only update's Lua), "not_found 0" for a missing job
--   reason: ok | unchanged (both accepted) | regression | terminal | not_found
-- The time of an accepted change is its history entry's id (XADD '*': the server's clock
--   in ms, and never behind the stream's last entry), so no entry holds an `at` field
--   of its own and no TIME is read; only an unchanged update (rule 8) reads TIME.
-- The job hash's `event_tail` holds the event's fields that only a full update changes
-- (ids, step, steps done, message, error, result, start and finish), JSON-encoded; this
-- script alone writes it, on every full update of a job not finished. A percent-only
-- update of a running job, the common case, then reads five fields and builds the event
-- around that one, reading and encoding nothing else (issue 14).
-- raises "INVALID <what>" on invalid input (rule 5), and on arguments that break this
-- header (a caller other than ProgressStore); nothing is written then. Redis does not
-- undo the writes of a script that fails halfway, so every argument is checked
-- before the first write.
local rcall = redis.call
local byte, find, sub = string.byte, string.find, string.sub -- locals: a global's lookup each time

if #KEYS ~= 2 or #ARGV < 5 or #ARGV > 11 then
  return redis.error_reply('INVALID update_progress takes 2 keys and 5 to 11 arguments, got '
    .. #KEYS .. ' and ' .. #ARGV)
end
-- the arguments as locals (cheaper than ARGV[i] each time), the ones left off filled in
local channel, all_channel, maxlen, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local arg_percent, arg_step, arg_status = ARGV[5], ARGV[6] or '', ARGV[7] or ''
local arg_message, arg_error, arg_result = ARGV[8] or '', ARGV[9] or '', ARGV[10] or ''
local arg_force = ARGV[11] or '0'
if arg_message ~= '' or arg_error ~= '' or arg_result ~= '' then
  for i, raw in ipairs({arg_message, arg_error, arg_result}) do
    if raw ~= '' and byte(raw) ~= 61 then -- 61: '='
      return redis.error_reply('INVALID ARGV[' .. (i + 7) .. '] must be "" (keep) or "=" followed by the value')
    end
  end
end
if arg_force ~= '0' and arg_force ~= '1' then
  return redis.error_reply('INVALID force must be "1" or "0", got ' .. arg_force)
end
if channel == '' or all_channel == '' then
  return redis.error_reply('INVALID the job\'s channel and the all-jobs channel must be named')
end
-- digits only: XADD and EXPIRE, after the first write, refuse "1e3", " 5" or "0x10";
-- and at most 15 of them, exact in a double; not all zeros.
if #maxlen > 15 or not find(maxlen, '^0*[1-9]%d*$') then
  return redis.error_reply('INVALID history MAXLEN must be a whole number from 1 to 10^15 - 1, got ' .. maxlen)
end
if #ttl > 15 or not find(ttl, '^0*[1-9]%d*$') then
  return redis.error_reply('INVALID TTL must be a whole number from 1 to 10^15 - 1, got ' .. ttl)
end
-- Redis >= 5 replicates a script by its effects, so reading TIME before the
-- writes is allowed without redis.replicate_commands().

local RANK = {pending = 0, running = 1, completed = 2, failed = 2, canceled = 2}

-- The documented percent precision: 6 decimals. Every percent is rounded here, the stored one
-- too (one written before this rule), so that comparing, completing at 100, storing and
-- publishing all see the same number. A whole number comes back as one (Lua >= 5.3
-- would print 40.0).
local function rounded(p)
  local r = math.floor(p * 1e6 + 0.5) / 1e6
  if r == math.floor(r) then return math.floor(r) end
  return r
end
-- the server's clock in ms, as text (the microseconds' first 3 digits, no number formatted)
local function now_ms()
  local t = rcall('TIME')
  return t[1] .. sub('00000' .. t[2], -6, -4)
end
-- the ms of a stream entry id "<ms>-<n>"
local function entry_ms(id)
  return sub(id, 1, find(id, '-', 1, true) - 1)
end
local function invalid_percent()
  return redis.error_reply('INVALID progress_percent must be a number from 0 to 100, got ' .. arg_percent)
end

-- The fast path: a percent-only update (no step, message, error or result; no status, or
-- `running` again) of a running job whose event_tail is written. Five fields read, no
-- steps, no JSON; the same rules as the full path below, which takes every other case
-- (completing at 100, a job not yet started, a finished one, a job without event_tail).
local hot = rcall('HMGET', KEYS[1], 'status', 'progress_percent', 'seq', 'current_step', 'event_tail')
if hot[1] == 'running' and hot[5] and arg_percent ~= '' and arg_step == '' and arg_message == ''
    and arg_error == '' and arg_result == '' and (arg_status == '' or arg_status == 'running') then
  local progress = tonumber(arg_percent)
  if progress == nil or progress ~= progress or progress < 0 or progress > 100 then
    return invalid_percent()
  end
  progress = rounded(progress)
  if progress < 100 then
    local cur_progress = rounded(tonumber(hot[2]) or 0)
    local seq = tonumber(hot[3]) or 0
    -- rule 3 (rule 2 cannot apply: the job is running)
    if progress < cur_progress and arg_force == '0' then return 'regression ' .. seq .. ' running' end
    if progress == cur_progress then -- rule 8
      rcall('HSET', KEYS[1], 'progress_updated_at_ms', now_ms())
      return 'unchanged ' .. seq .. ' running'
    end
    seq = seq + 1
    local percent, seq_s = tostring(progress), tostring(seq)
    local now_s = entry_ms(rcall('XADD', KEYS[2], 'MAXLEN', '~', maxlen, '*', 'seq', seq_s,
      'progress_percent', percent, 'current_step', hot[4] or '', 'status', 'running'))
    rcall('HSET', KEYS[1], 'progress_percent', percent, 'seq', seq_s, 'progress_updated_at_ms', now_s)
    local payload = '{"seq":' .. seq_s .. ',"status":"running","progress_percent":' .. percent
      .. ',"progress_updated_at_ms":' .. now_s .. ',' .. hot[5] .. '}'
    rcall('PUBLISH', channel, payload)
    rcall('PUBLISH', all_channel, payload)
    return 'ok ' .. seq_s .. ' running'
  end
end

-- The full path. Not the steps: a percent-only update needs none of them; steps() reads
-- them when a step is named or the job completes.
local cur = rcall('HMGET', KEYS[1], 'status', 'progress_percent', 'current_step',
  'completed_count', 'total_steps', 'message', 'error', 'result', 'seq', 'started_at_ms', 'job_id',
  'paper_id', 'finished_at_ms', 'completed_json', 'event_tail')
-- rule 1: only an existing job (create_job always sets job_id)
if not cur[11] then
  return 'not_found 0'
end
local cur_status, cur_step = cur[1], cur[3] or ''
local cur_progress = rounded(tonumber(cur[2]) or 0)
local cur_done = tonumber(cur[4]) or 0
local seq = tonumber(cur[9]) or 0
local steps_cache = nil
local function steps()
  if steps_cache == nil then steps_cache = cjson.decode(rcall('HGET', KEYS[1], 'steps')) end
  return steps_cache
end
local total_steps = tonumber(cur[5])
local force = arg_force == '1'

-- rule 5: validation, before anything else and never lifted by force
local progress = nil
if arg_percent ~= '' then
  progress = tonumber(arg_percent)
  if progress == nil or progress ~= progress or progress < 0 or progress > 100 then
    return invalid_percent()
  end
  progress = rounded(progress)
end
local status = nil
if arg_status ~= '' then
  if RANK[arg_status] == nil then
    return redis.error_reply('INVALID status must be one of pending, running, completed, failed, canceled; got ' .. arg_status)
  end
  status = arg_status
end
local step, step_index = nil, nil
if arg_step ~= '' then
  for i, name in ipairs(steps()) do
    if name == arg_step then step_index = i end
  end
  if step_index == nil then
    return redis.error_reply('INVALID current_step ' .. arg_step .. ' is not one of the job\'s steps')
  end
  step = arg_step
end
local function optional(raw, stored)
  if raw == '' then return stored or '' end
  return string.sub(raw, 2)
end
local message = optional(arg_message, cur[6])
local err = optional(arg_error, cur[7])
local result = optional(arg_result, cur[8])
if result ~= '' and arg_result ~= '' then
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
  return 'terminal ' .. seq .. ' ' .. cur_status
end

-- rule 3: nothing moves back (unless forced)
if not force then
  if progress ~= nil and progress < cur_progress then return 'regression ' .. seq .. ' ' .. cur_status end
  if step_index ~= nil and step_index <= cur_done then return 'regression ' .. seq .. ' ' .. cur_status end
  if status ~= nil and RANK[status] < RANK[cur_status] then return 'regression ' .. seq .. ' ' .. cur_status end
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

-- rule 8: nothing changed
if new_status == cur_status and new_progress == cur_progress and new_step == cur_step
    and new_done == cur_done and message == (cur[6] or '') and err == (cur[7] or '')
    and result == (cur[8] or '') then
  rcall('HSET', KEYS[1], 'progress_updated_at_ms', now_ms())
  return 'unchanged ' .. seq .. ' ' .. cur_status
end

-- rules 7 and 9
seq = seq + 1
-- Each number turned into text once, for the hash, the history and the event (a number
-- given to redis.call, or joined with .., is formatted again every time).
local percent, seq_s, total_s = tostring(new_progress), tostring(seq), cur[5]
-- the history entry first: its id is the change's time (the first write; every check is done)
local now_s = entry_ms(rcall('XADD', KEYS[2], 'MAXLEN', '~', maxlen, '*', 'seq', seq_s,
  'progress_percent', percent, 'current_step', new_step, 'status', new_status))
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
local tail = '"job_id":"' .. cur[11] .. '","paper_id":"' .. cur[12]
  .. '","current_step":' .. jstr(new_step) .. ',"completed_steps":' .. done_json
  .. ',"total_steps":' .. total_s
  .. ',"message":' .. jstr(message) .. ',"error":' .. jstr(err)
  .. ',"result":' .. (result ~= '' and result or 'null')
  .. ',"started_at_ms":' .. jnum(started) .. ',"finished_at_ms":' .. jnum(finished)
local payload = '{"seq":' .. seq_s .. ',"status":"' .. new_status .. '","progress_percent":' .. percent
  .. ',"progress_updated_at_ms":' .. now_s .. ',' .. tail .. '}'
-- A finished job takes no fast update: it keeps no copy (its result may be large).
if not terminal and tail ~= cur[15] then set('event_tail', tail) end
rcall('HSET', KEYS[1], unpack(fields))
if terminal and cur[15] then rcall('HDEL', KEYS[1], 'event_tail') end
rcall('PUBLISH', channel, payload)
rcall('PUBLISH', all_channel, payload)

-- Rule 9's TTL: a finished job expires ARGV[4] (ttl) seconds after it finished, but never
-- before the PostgreSQL mirror holds it. So the time is written down here and the keys
-- are made persistent; expire_mirrored sets the expiry once the job's row has landed.
-- (A job forced back to life, or to another ending, waits again the same way.)
if terminal then
  rcall('HSET', KEYS[1], 'expires_at_ms', tonumber(now_s) + tonumber(ttl) * 1000)
end
if terminal or RANK[cur_status] == 2 then
  rcall('PERSIST', KEYS[1])
  rcall('PERSIST', KEYS[2])
end
return 'ok ' .. seq_s .. ' ' .. new_status
