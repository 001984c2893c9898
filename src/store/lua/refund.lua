-- Gives back one hit of a fixed-window rate limit (a send that never reached the provider): the
-- count drops by one, never below zero, and the window keeps its end.
-- KEYS[1]  `{prefix}rl:{key}`
-- Replies the count after the refund (0 when the window had ended).
local count = tonumber(redis.call('GET', KEYS[1]) or '0')
if count and count > 0 then
  return redis.call('DECR', KEYS[1])
end
return 0
