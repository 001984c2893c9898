-- Counts one wrong PIN; at the limit the device is deleted in the same step.
-- KEYS[1]  the device hash     ARGV[2]  device id     ARGV[3]  max PIN attempts (0 = unlimited)
-- Replies the failures counted so far (this one included), or -1 when there is no device.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return -1
end
local failures = redis.call('HINCRBY', KEYS[1], 'pin_failures', 1)
local max = tonumber(ARGV[3])
-- domain::device::pin_failure: the failure that reaches the limit disconnects.
if max > 0 and failures >= max then
  delete_device(ARGV[2])
end
return failures
