-- Settles a PIN attempt that device_pin_check counted and that turned out wrong: at the limit
-- the device is deleted in the same step (domain::device::pin_failure).
-- KEYS[1]  the device hash     ARGV[2]  device id     ARGV[3]  max PIN attempts (0 = unlimited)
-- Replies the attempts counted in a row, or -1 when there is no device.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return -1
end
local failures = tonumber(redis.call('HGET', KEYS[1], 'pin_failures') or '0') or 0
local max = tonumber(ARGV[3])
if max > 0 and failures >= max then
  delete_device(ARGV[2])
end
return failures
