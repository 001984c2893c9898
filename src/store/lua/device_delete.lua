-- Deletes a device and everything that belongs to it (see `delete_device` in device_common).
-- KEYS[1]  the device hash     ARGV[2]  device id
-- Replies 1, or 0 when there was no such device.
if delete_device(ARGV[2]) then
  return 1
end
return 0
