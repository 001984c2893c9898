-- Claims a key once: true the first time within its TTL by the gateway's clock.
-- KEYS[1]  `{prefix}once:<key>`
-- ARGV[1]  now (epoch ms)   ARGV[2]  when the claim ends (epoch ms)   ARGV[3]  TTL in ms
-- Replies 1 when claimed now, 0 when an earlier claim still holds.
local ends = tonumber(redis.call('GET', KEYS[1]) or '')
if ends and ends > tonumber(ARGV[1]) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
