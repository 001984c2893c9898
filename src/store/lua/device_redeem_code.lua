-- Uses an enrollment code up: reads and deletes it in one step, so of two concurrent
-- redemptions exactly one gets it. The caller checks the expiry written in the value.
-- KEYS[1]  `{prefix}enroll-code:<hex HMAC>`
-- Replies the value `<expires_at ms>:<user id>`, or nil.
local value = redis.call('GET', KEYS[1])
if value then
  redis.call('DEL', KEYS[1])
end
return value
