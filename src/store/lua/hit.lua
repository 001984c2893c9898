-- Fixed-window rate limit: counts one hit, starts the window on the first one.
-- KEYS[1]  `{prefix}rl:{key}`     ARGV[1]  window in ms
-- Replies {count in this window (this hit included), ms until the window resets}.
local count = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if count == 1 or ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return { count, ttl }
