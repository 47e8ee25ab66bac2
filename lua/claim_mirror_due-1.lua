-- claim_mirror_due: hand up to N due jobs of the mirror's due set to ONE sweeper.
-- Every worker runs a mirror loop; claiming makes each due job go to one of them,
-- and the lease makes a claim expire, so a sweeper that dies mid-batch loses nothing.
-- KEYS[1] the due set (job id -> time of the next try, ms)
-- ARGV[1] now (ms, the Redis clock)   ARGV[2] how many   ARGV[3] the lease (ms)
-- returns the claimed job ids, the longest due first; each is due again at now + lease
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #ids > 0 then
  local at = tonumber(ARGV[1]) + tonumber(ARGV[3])
  local args = {}
  for i, id in ipairs(ids) do
    args[2 * i - 1] = at
    args[2 * i] = id
  end
  redis.call('ZADD', KEYS[1], 'XX', unpack(args))
end
return ids
