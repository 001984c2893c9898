-- Drops a device's push registration (its keys stay).
-- KEYS[1]  the device hash     ARGV[2]  device id
-- Replies 1, or 0 when there was no device or no registration.
if redis.call('EXISTS', KEYS[1]) == 1 and drop_push(ARGV[2]) then
  return 1
end
return 0
