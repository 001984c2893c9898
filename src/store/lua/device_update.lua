-- Replaces a device's record (JSON of `Device` without `push`) when the device exists.
-- KEYS[1]  the device hash     ARGV[1]  record
-- Replies 1, or 0 when there is no such device.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], 'record', ARGV[1])
return 1
