-- Drops whichever registration holds a token (the push provider called it invalid).
-- KEYS[1]  the token index, `{prefix}{devices}:push-token:<sha256 hex>`
-- ARGV[2]  the sha256 hex of the token
-- Replies the device id, or nil when no live registration holds it (a stale entry is removed).
local holder = redis.call('GET', KEYS[1])
if not holder then
  return false
end
if redis.call('HGET', device_key(holder), 'token') ~= ARGV[2] then
  redis.call('DEL', KEYS[1])
  return false
end
drop_push(holder)
return holder
