-- Remembers a push transaction for a device until it expires, and drops expired ones.
-- KEYS[1]  `{prefix}{devices}:device-pending:<id>`, a sorted set scored by expiry (epoch ms)
-- ARGV[1]  now (epoch ms)   ARGV[2]  expires_at (epoch ms)   ARGV[3]  transaction id
-- The key lives until its last entry expires.
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if #last == 0 then
  return 0
end
redis.call('PEXPIRE', KEYS[1], math.max(1, tonumber(last[2]) - tonumber(ARGV[1])))
return 1
