-- Adds a transaction to its user's admin index once the user is known (an OTP transaction is
-- linked to its user only when a phone answers it).
-- KEYS[1]  the transaction hash   KEYS[2]  the user's index `{prefix}tx-user:{<sha256>}`
-- ARGV[1]  the transaction id   ARGV[2]  index horizon (ms)   ARGV[3]  the index key's TTL (ms)
-- Replies 1 when indexed, 0 when the transaction is gone.
local data = redis.call('HGET', KEYS[1], 'data')
if not data then
  return 0
end
local created_at = cjson.decode(data).created_at
if type(created_at) ~= 'number' then
  return 0
end
redis.call('ZADD', KEYS[2], string.format('%d', created_at), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
