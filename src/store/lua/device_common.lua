-- stepgate: helpers prepended to the device scripts that touch more than one key. They mirror
-- the memory device store; the device conformance suite holds both to the same outcomes.
--
-- Every device key lives under the one hash tag `{devices}`, so a script may reach the keys it
-- derives (other devices of the user, token index entries) on a cluster too.
-- KEYS[1]  the key the script is about (it carries the slot)
-- ARGV[1]  the base of the device keys, `{prefix}{devices}:`
local base = ARGV[1]

local function device_key(id)
  return base .. 'device:' .. id
end

local function token_key(token_hash)
  return base .. 'push-token:' .. token_hash
end

local function pending_key(id)
  return base .. 'device-pending:' .. id
end

-- Drops the device's push registration and its token index entry (only while the entry points
-- at this device). Returns whether the device had a registration.
local function drop_push(id)
  local key = device_key(id)
  local f = redis.call('HMGET', key, 'push', 'token')
  if f[2] and f[2] ~= '' then
    local index = token_key(f[2])
    if redis.call('GET', index) == id then
      redis.call('DEL', index)
    end
  end
  redis.call('HDEL', key, 'push', 'token')
  return f[1] ~= false
end

-- Deletes the device with its push registration, token index entry, user index entry, PIN
-- counter (a field of its hash) and pending list. Returns whether there was a device.
local function delete_device(id)
  local key = device_key(id)
  redis.call('DEL', pending_key(id))
  local user_key = redis.call('HGET', key, 'user_key')
  if not user_key then
    return false
  end
  drop_push(id)
  redis.call('ZREM', user_key, id)
  redis.call('DEL', key)
  return true
end
