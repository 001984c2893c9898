-- regulation::finish: compare-and-set from pending to a terminal state.
-- ARGV[3]: the new status. ARGV[4]: the reason, or '' for none. ARGV[5]: '1' when ARGV[6] holds a
-- user id to link, '0' to keep the stored one. ARGV[7]: the evidence JSON, or '' for none.
-- Replies: Finished {1}, Expired {4}, NotPending {5, 0, 0, status}.
local tx, reply = load_tx()
if not tx then
  return reply
end
-- Status::can_become: only pending moves, and only to a terminal state.
if tx.status ~= 'pending' or ARGV[3] == 'pending' then
  return { R_NOT_PENDING, 0, 0, tx.status }
end
if expire_if_due(tx) then
  return { R_EXPIRED, 0, 0, '' }
end
redis.call('HSET', key, 'status', ARGV[3], 'reason', ARGV[4], 'finished_at', now_arg)
if ARGV[5] == '1' then
  redis.call('HSET', key, 'user_id', ARGV[6])
end
if ARGV[7] ~= '' then
  redis.call('HSET', key, 'evidence', ARGV[7])
end
return { R_OK, 0, 0, '' }
