-- Removes a callback job (delivered or given up) from both structures.
-- KEYS[1]  the due set, KEYS[2] the jobs hash
-- ARGV[1]  job id
redis.call('ZREM', KEYS[1], ARGV[1])
return redis.call('HDEL', KEYS[2], ARGV[1])
