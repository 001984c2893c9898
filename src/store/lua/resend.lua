-- regulation::resend. ARGV[3]: the new code's hash (64 hex characters), or '' to keep the code.
-- Replies: Resent {1, resends}, Disabled {7}, LimitReached {8}, Expired {4},
-- NotPending {5, 0, 0, status}.
local tx, reply = load_pending(nil)
if not tx then
  return reply
end
if tx.max_resends == 0 then
  return { R_DISABLED, 0, 0, '' }
end
if tx.resends >= tx.max_resends then
  return { R_LIMIT, 0, 0, '' }
end
local resends = tx.resends + 1
if ARGV[3] ~= '' then
  redis.call('HSET', key, 'resends', resends, 'code', ARGV[3])
else
  redis.call('HSET', key, 'resends', resends)
end
return { R_OK, resends, 0, '' }
