-- Registers a device's push token under an enrollment mode, with every check in the same step.
-- KEYS[1]  the device hash
-- ARGV[2]  device id   ARGV[3]  sha256 hex of the token   ARGV[4]  registration JSON
-- ARGV[5]  mode: single | override | multiple
-- Replies {'unknown'}, {'token_in_use'}, {'already_enrolled', id} or {'registered', ids...}
-- (the devices whose registrations were dropped).
local id, token_hash, mode = ARGV[2], ARGV[3], ARGV[5]
local own = redis.call('HMGET', KEYS[1], 'user_key', 'application')
if not own[1] then
  return { 'unknown' }
end
local index = token_key(token_hash)
local holder = redis.call('GET', index)
if holder and holder ~= id and redis.call('HGET', device_key(holder), 'token') == token_hash then
  return { 'token_in_use' }
end
-- The user's other devices of the same application that hold a registration, oldest first.
local others = {}
for _, other in ipairs(redis.call('ZRANGE', own[1], 0, -1)) do
  if other ~= id then
    local f = redis.call('HMGET', device_key(other), 'application', 'push')
    if f[1] == own[2] and f[2] then
      table.insert(others, other)
    end
  end
end
-- domain::device::push_enrollment_decision
if mode == 'single' and #others > 0 then
  return { 'already_enrolled', others[1] }
end
local reply = { 'registered' }
if mode == 'override' then
  for _, other in ipairs(others) do
    drop_push(other)
    table.insert(reply, other)
  end
end
drop_push(id)
redis.call('HSET', KEYS[1], 'push', ARGV[4], 'token', token_hash)
redis.call('SET', index, id)
return reply
