-- otp::redeem: an OTP submission in one step. The transaction must be an OTP one (the `data`
-- JSON's method) and either unbound or bound to the submitting user; otherwise it answers as
-- missing and is not touched. Then regulation::verify (status, expiry, code, attempts), and a
-- right code links the user and finishes the transaction as the answer says.
-- ARGV[3]: the submitted code's hash, 64 hex characters. ARGV[4]: the phone's user id.
-- ARGV[5]: the final status, 'approved' or 'denied'. ARGV[6]: the reason, or '' for none.
-- ARGV[7]: the evidence JSON, or '' for none.
-- Replies {kind, a, b, status}: Finished {1, attempts, 0, status}, WrongCode {2, attempts,
-- remaining | -1 when unlimited}, Exhausted {3, attempts}, Expired {4}, NotPending {5, 0, 0,
-- status}, Missing {0}.
local tx, reply = load_tx()
if not tx then
  return reply
end
local ok, data = pcall(cjson.decode, read_data() or '')
if not ok or type(data) ~= 'table' or data.method ~= 'otp' then
  return { R_MISSING, 0, 0, '' }
end
if tx.user_id and tx.user_id ~= ARGV[4] then
  return { R_MISSING, 0, 0, '' }
end
if tx.status ~= 'pending' then
  return { R_NOT_PENDING, 0, 0, tx.status }
end
if expire_if_due(tx) then
  return { R_EXPIRED, 0, 0, '' }
end
if tx.code == '' then
  return { R_MISSING, 0, 0, '' }
end
local attempts = tx.attempts + 1
if ct_equal(tx.code, ARGV[3]) then
  redis.call('HSET', key, 'status', ARGV[5], 'reason', ARGV[6], 'attempts', attempts,
    'finished_at', now_arg, 'user_id', ARGV[4])
  if ARGV[7] ~= '' then
    redis.call('HSET', key, 'evidence', ARGV[7])
  end
  return { R_OK, attempts, 0, ARGV[5] }
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
