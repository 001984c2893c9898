-- regulation::verify. ARGV[3]: the submitted code's hash, 64 hex characters.
-- Replies: Approved {1, attempts}, WrongCode {2, attempts, remaining | -1 when unlimited},
-- Exhausted {3, attempts}, Expired {4}, NotPending {5, 0, 0, status}, NoCode {6}.
local tx, reply = load_pending()
if not tx then
  return reply
end
if tx.code == '' then
  return { R_NO_CODE, 0, 0, '' }
end
local attempts = tx.attempts + 1
if ct_equal(tx.code, ARGV[3]) then
  redis.call('HSET', key, 'status', 'approved', 'attempts', attempts, 'finished_at', now_arg)
  return { R_OK, attempts, 0, '' }
end
if tx.max_attempts == 0 then
  redis.call('HSET', key, 'attempts', attempts)
  return { R_WRONG, attempts, -1, '' }
end
local remaining = tx.max_attempts - attempts
if remaining <= 0 then
  redis.call('HSET', key, 'status', 'failed', 'reason', 'attempts_exhausted',
    'finished_at', now_arg, 'attempts', attempts)
  return { R_EXHAUSTED, attempts, 0, '' }
end
redis.call('HSET', key, 'attempts', attempts)
return { R_WRONG, attempts, remaining, '' }
