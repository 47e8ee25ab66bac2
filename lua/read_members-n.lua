-- read_members: what a batch's snapshot needs of each member, and the server's clock, at once.
-- KEYS[1..n] the members' job hashes (one Redis only: on a cluster they sit in many slots,
--            and ProgressStore.batch_state reads them per node instead)
-- ARGV       the fields to read of each (status first)
-- returns one JSON string: [seconds, microseconds, [field values of member 1], ...],
--   a member Redis does not hold as [] (one JSON string, not nested RESP: redis-py parses a
--   reply value by value in Python, json.loads the whole of it in C)
local rcall = redis.call
local t = rcall('TIME')
local out = {t[1], t[2]}
local empty = cjson.decode('[]')
for i = 1, #KEYS do
  local row = rcall('HMGET', KEYS[i], unpack(ARGV))
  if row[1] == false then
    out[#out + 1] = empty
  else
    for j = 1, #row do
      if row[j] == false then row[j] = '' end
    end
    out[#out + 1] = row
  end
end
return cjson.encode(out)
