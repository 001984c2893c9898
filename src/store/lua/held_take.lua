-- Takes a held request out: reads it and deletes it in one step, so of two concurrent takes
-- exactly one gets it.
-- KEYS[1]  the held request hash, `{prefix}held:{<uuid>}`
-- Replies {ticket, request, body} (a missing field as nil, which the caller reports as corrupt),
-- or nil when nothing is held.
local held = redis.call('HMGET', KEYS[1], 'ticket', 'request', 'body')
if redis.call('DEL', KEYS[1]) == 0 then
  return nil
end
return held
