-- Stores a new transaction unless its id is taken. Its admin indexes live in other hash slots
-- (several on a cluster), so they are written beside this script, not by it (see `admin`).
-- KEYS[1]  the transaction hash
-- ARGV[1]  now (epoch ms, gateway clock)   ARGV[2]  retention (ms)
-- ARGV[3]  the key's TTL in ms: (expires_at - now) + retention, relative, never absolute
-- ARGV[4..] field, value, field, value, ...
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
redis.call('HSET', key, unpack(ARGV, 4))
redis.call('PEXPIRE', key, ARGV[3])
return 1
