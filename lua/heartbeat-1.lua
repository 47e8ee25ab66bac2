-- heartbeat: stamp the worker's last sign of life on a job (no seq, no event).
-- KEYS[1] job hash
-- returns the stamp in ms, or 0 when the job is missing or finished
local rcall = redis.call
local status = rcall('HGET', KEYS[1], 'status')
if not status or status == 'completed' or status == 'failed' or status == 'canceled' then
  return 0
end
local t = rcall('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
rcall('HSET', KEYS[1], 'heartbeat_at_ms', now)
return now
