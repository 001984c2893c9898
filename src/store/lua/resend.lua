-- regulation::resend. ARGV[3]: the new code's hash (64 hex characters), or '' to keep the code.
-- Replies: Resent {1, resends}, Disabled {7}, LimitReached {8}, Expired {4},
-- NotPending {5, 0, 0, status}.
local tx, reply = load_tx()
if not tx then
  return reply
end
if tx.status ~= 'pending' then
  return { R_NOT_PENDING, 0, 0, tx.status }
end
if expire_if_due(tx) then
  return { R_EXPIRED, 0, 0, '' }
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
