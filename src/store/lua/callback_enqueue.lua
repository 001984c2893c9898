-- Adds (or replaces) a callback job: the job's JSON in the jobs hash and its due time in the
-- due set, in one step.
-- KEYS[1]  the due set, `{prefix}{callbacks}:due` (score = due time, epoch ms)
-- KEYS[2]  the jobs hash, `{prefix}{callbacks}:jobs` (job id -> job JSON)
-- ARGV[1]  job id
-- ARGV[2]  due time, epoch ms
-- ARGV[3]  job JSON (`attempt` included; the due time lives in the set only)
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return 1
