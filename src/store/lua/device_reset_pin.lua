-- A right PIN: resets the device's wrong-PIN count (HDEL never creates the hash, so a reset
-- cannot resurrect a deleted device).
-- KEYS[1]  the device hash
-- Replies the wrong PINs counted before the reset (0 when none or no device).
local failures = tonumber(redis.call('HGET', KEYS[1], 'pin_failures') or '0') or 0
redis.call('HDEL', KEYS[1], 'pin_failures')
return failures
