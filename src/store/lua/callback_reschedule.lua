-- Records the attempts made on a callback job and makes it due again, only while the job still
-- exists (a job completed by another worker stays gone).
-- KEYS[1]  the due set, KEYS[2] the jobs hash
-- ARGV[1]  job id
-- ARGV[2]  attempts made
-- ARGV[3]  next due time, epoch ms
-- Replies 1 when rescheduled, 0 when the job is gone.
local json = redis.call('HGET', KEYS[2], ARGV[1])
if not json then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 0
end
local job = cjson.decode(json)
job['attempt'] = tonumber(ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], cjson.encode(job))
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
