-- Counts a PIN attempt before it is checked, so that answers arriving together cannot check
-- more PINs than allowed (domain::device::pin_check_allowed).
-- KEYS[1]  the device hash     ARGV[1]  max PIN attempts (0 = unlimited)
-- Replies the attempts counted in a row (this one included); -1 when there is no device; -2
-- when the attempts already counted take the limit (nothing counted, nothing to check).
if redis.call('EXISTS', KEYS[1]) == 0 then
  return -1
end
local max = tonumber(ARGV[1])
local counted = tonumber(redis.call('HGET', KEYS[1], 'pin_failures') or '0') or 0
if max > 0 and counted >= max then
  return -2
end
return redis.call('HINCRBY', KEYS[1], 'pin_failures', 1)
