-- Stores a device, replacing any device with the same id (and its index entries).
-- KEYS[1]  the device hash, `{prefix}{devices}:device:<id>`
-- ARGV[2]  device id      ARGV[3]  record (JSON of `Device` without `push`)
-- ARGV[4]  user id        ARGV[5]  the user's index key   ARGV[6]  application
-- ARGV[7]  created_at (epoch ms)   ARGV[8]  push registration JSON ('' for none)
-- ARGV[9]  sha256 hex of the push token ('' for none)
local id = ARGV[2]
delete_device(id)
redis.call('HSET', KEYS[1], 'record', ARGV[3], 'user', ARGV[4], 'user_key', ARGV[5],
  'application', ARGV[6], 'created', ARGV[7])
if ARGV[8] ~= '' then
  redis.call('HSET', KEYS[1], 'push', ARGV[8], 'token', ARGV[9])
  redis.call('SET', token_key(ARGV[9]), id)
end
redis.call('ZADD', ARGV[5], ARGV[7], id)
return 1
