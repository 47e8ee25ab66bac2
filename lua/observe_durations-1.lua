-- observe_durations: add finished jobs' and steps' durations to the histograms every process shares.
-- KEYS[1] the histograms' hash
-- ARGV[1] the most series the hash keeps (a series is one set of labels)
-- then, per observation, three values:
--   ARGV[i] series (a JSON list: kind, labels...)   ARGV[i+1] the bucket's upper bound ("" for a
--   plain count)   ARGV[i+2] seconds
-- Fields: "<series>|<bound>" counts the observations in that bucket alone (the reader adds them
-- up), "<series>|count" all of them, "<series>|sum" their seconds; "#series" how many series.
-- returns how many observations were kept (those of a new series past the cap are dropped)
local rcall = redis.call
local hash = KEYS[1]
local cap = tonumber(ARGV[1])
local kept = 0
for i = 2, #ARGV, 3 do
  local series = ARGV[i]
  local known = rcall('HEXISTS', hash, series .. '|count') == 1
  if not known and tonumber(rcall('HGET', hash, '#series') or '0') < cap then
    rcall('HINCRBY', hash, '#series', 1)
    known = true
  end
  if known then
    rcall('HINCRBY', hash, series .. '|count', 1)
    if ARGV[i + 1] ~= '' then
      rcall('HINCRBY', hash, series .. '|' .. ARGV[i + 1], 1)
      rcall('HINCRBYFLOAT', hash, series .. '|sum', ARGV[i + 2])
    end
    kept = kept + 1
  end
end
return kept
