-- stepgate: a user's bounded list (step-ups pending, requests held), one atomic admission.
-- KEYS[1]  `{prefix}guard:{<user key>}:<list>`, a ZSET of entries scored by when they stop
--          counting (epoch ms); same hash tag as the user's guard hash, so one slot per user
-- ARGV[1]  now (epoch ms, the gateway's clock)   ARGV[2]  the entry   ARGV[3]  its live-until
-- ARGV[4]  the bound (0 = none)   ARGV[5..] entries to drop first (found ended by the caller)
-- Replies {1} when admitted, {0, entry, until, entry, until, ...} (soonest first) when full.
local key = KEYS[1]
local now = tonumber(ARGV[1])
local max = tonumber(ARGV[4])
for i = 5, #ARGV do
  redis.call('ZREM', key, ARGV[i])
end
redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
if max > 0 and redis.call('ZCARD', key) >= max then
  local reply = { 0 }
  for _, value in ipairs(redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')) do
    table.insert(reply, value)
  end
  return reply
end
redis.call('ZADD', key, ARGV[3], ARGV[2])
local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
local ttl = math.max(tonumber(last[2]) - now, 1)
redis.call('PEXPIRE', key, string.format('%d', ttl))
return { 1 }
