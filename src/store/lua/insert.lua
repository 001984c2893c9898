-- Stores a new transaction unless its id is taken, and indexes it for the admin API in the same
-- step.
-- KEYS[1]  the transaction hash
-- KEYS[2]  the time index `{prefix}tx-index` (ZSET of ids scored by created_at ms)
-- KEYS[3]  when the transaction has a user: that user's index `{prefix}tx-user:{<sha256>}`
-- ARGV[1]  now (epoch ms, gateway clock)   ARGV[2]  retention (ms)
-- ARGV[3]  the key's TTL in ms: (expires_at - now) + retention, relative, never absolute
-- ARGV[4]  created_at (epoch ms), the index score   ARGV[5]  the transaction id, the member
-- ARGV[6]  index horizon: entries scored below it point at evicted transactions and are trimmed
-- ARGV[7]  the index keys' TTL in ms (an index nobody writes to goes away)
-- ARGV[8..] field, value, field, value, ...
-- Replies 1 when stored, 0 when the id exists.
local key = KEYS[1]
if redis.call('EXISTS', key) == 1 then
  local expires_at = tonumber(redis.call('HGET', key, 'expires_at'))
  -- A leftover past its retention by the gateway's clock counts as evicted.
  if not expires_at or tonumber(ARGV[1]) < expires_at + tonumber(ARGV[2]) then
    return 0
  end
  redis.call('DEL', key)
end
redis.call('HSET', key, unpack(ARGV, 8))
redis.call('PEXPIRE', key, ARGV[3])
for i = 2, #KEYS do
  redis.call('ZADD', KEYS[i], ARGV[4], ARGV[5])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', '(' .. ARGV[6])
  redis.call('PEXPIRE', KEYS[i], ARGV[7])
end
return 1
