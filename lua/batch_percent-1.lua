-- batch_percent: raise a batch's percent high-water mark, never lower it.
-- KEYS[1] batch hash
-- ARGV[1] the percent a reader has just computed from the members (0..100)
-- returns the mark after the call (a string), or false when the batch hash is gone.
-- Every reader passes its figure through here before it shows it, so no reader
-- ever shows a lower percent than one shown before (README, "Batches and tags"), even
-- when a member's percent was forced down or a member read from PostgreSQL.
local rcall = redis.call

local new = tonumber(ARGV[1])
if new == nil or new ~= new or new < 0 or new > 100 then
  return redis.error_reply('INVALID the percent must be a number from 0 to 100, got ' .. tostring(ARGV[1]))
end
local cur = rcall('HGET', KEYS[1], 'percent_max')
if cur == false then
  if rcall('EXISTS', KEYS[1]) == 0 then return false end
  cur = '0'
end
if new > tonumber(cur) then
  rcall('HSET', KEYS[1], 'percent_max', ARGV[1])
  return ARGV[1]
end
return cur
