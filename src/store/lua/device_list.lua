-- A user's devices, oldest first (by created_at, ties by id: the sorted set's order).
-- KEYS[1]  the user's index, `{prefix}{devices}:user-devices:<sha256 hex of user id>`
-- Replies one {id, record, push, user, application, created} per device (nil for a missing
-- field); ids whose hash is gone are left out.
local reply = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local f = redis.call('HMGET', device_key(id), 'record', 'push', 'user', 'application', 'created')
  if f[1] then
    table.insert(reply, { id, f[1], f[2], f[3], f[4], f[5] })
  end
end
return reply
