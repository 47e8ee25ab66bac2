-- observe_durations: add finished jobs' and steps' durations to the histograms every process shares.
-- KEYS[1] the histograms' hash
-- ARGV[1] the most series the hash keeps (a series is one set of labels)
-- then, per series, a group: ARGV[i] series (a JSON list: kind, labels...), ARGV[i+1] how many
--   observations, ARGV[i+2] their seconds added up, ARGV[i+3] n: how many buckets follow, then
--   n pairs of a bucket's upper bound and how many of the observations fell in it
-- Fields: "<series>|<bound>" counts the observations in that bucket alone (the reader adds them
-- up), "<series>|count" all of them, "<series>|sum" their seconds; "#series" how many series.
-- returns how many series were kept (a new series past the cap is dropped)
local rcall = redis.call
local hash = KEYS[1]
local cap = tonumber(ARGV[1])
local kept = 0
local i = 2
while i <= #ARGV do
  local series = ARGV[i]
  local buckets = tonumber(ARGV[i + 3])
  local known = rcall('HEXISTS', hash, series .. '|count') == 1
  if not known and tonumber(rcall('HGET', hash, '#series') or '0') < cap then
    rcall('HINCRBY', hash, '#series', 1)
    known = true
  end
  if known then
    rcall('HINCRBY', hash, series .. '|count', ARGV[i + 1])
    if buckets > 0 then
      rcall('HINCRBYFLOAT', hash, series .. '|sum', ARGV[i + 2])
    end
    for b = 1, buckets do
      local at = i + 2 + 2 * b
      rcall('HINCRBY', hash, series .. '|' .. ARGV[at], ARGV[at + 1])
    end
    kept = kept + 1
  end
  i = i + 4 + 2 * buckets
end
return kept
