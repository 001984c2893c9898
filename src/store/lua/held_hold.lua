-- Holds a request while its step-up is pending: the three fields and the key's TTL in one step,
-- so a hash is never left behind without an expiry (it can carry a body of several MiB).
-- KEYS[1]  the held request hash, `{prefix}held:{<uuid>}`
-- ARGV[1]  the TTL in ms (at least 1), relative
-- ARGV[2]  the ticket (JSON)   ARGV[3]  the request head (JSON)   ARGV[4]  the body, raw bytes
-- Replies 1.
redis.call('HSET', KEYS[1], 'ticket', ARGV[2], 'request', ARGV[3], 'body', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
