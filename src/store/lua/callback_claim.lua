-- Hands out due callback jobs and leases them in the same step, so two workers never get the
-- same job at once and a job whose worker died is due again when the lease ends.
-- KEYS[1]  the due set, `{prefix}{callbacks}:due` (score = due time, epoch ms)
-- KEYS[2]  the jobs hash, `{prefix}{callbacks}:jobs` (job id -> job JSON)
-- ARGV[1]  now, epoch ms (the gateway's clock)
-- ARGV[2]  at most this many jobs
-- ARGV[3]  end of the lease, epoch ms: the claimed jobs' new due time
-- Replies {id1, json1, id2, json2, ...}, earliest due first.
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local claimed = {}
for _, id in ipairs(ids) do
  local job = redis.call('HGET', KEYS[2], id)
  if job then
    redis.call('ZADD', KEYS[1], ARGV[3], id)
    claimed[#claimed + 1] = id
    claimed[#claimed + 1] = job
  else
    -- A due entry without its job (a half-written job cannot happen; a manual edit can).
    redis.call('ZREM', KEYS[1], id)
  end
end
return claimed
