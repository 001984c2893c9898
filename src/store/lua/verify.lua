-- regulation::belongs_to, then regulation::verify, in one step. ARGV[3]: the submitted code's
-- hash, 64 hex characters. ARGV[4]: the user id the caller expects; ARGV[5]: the API client the
-- caller acts through ('' for the gateway's proxy). Another user's or another client's
-- transaction answers as missing and is not touched.
-- Replies {kind, a, b, status, data}: Approved {1, attempts}, WrongCode {2, attempts, remaining |
-- -1 when unlimited}, Exhausted {3, attempts}, Expired {4}, NotPending {5, 0, 0, status},
-- NoCode {6} (also for a transaction that is not SMS), Missing {0}; `data` is the immutable
-- JSON (type and method, for metrics), '' when missing.
local raw_data = read_data()
local function decide()
  local ok, data = pcall(cjson.decode, raw_data or '')
  if ok and type(data) == 'table' then
    local details = data.details
    local starter = ''
    if type(details) == 'table' and type(details.client_id) == 'string' then
      starter = details.client_id
    end
    if starter ~= ARGV[5] then
      return { R_MISSING, 0, 0, '' }
    end
  end
  local tx, reply = load_pending(ARGV[4])
  if not tx then
    return reply
  end
  if tx.code == '' then
    return { R_NO_CODE, 0, 0, '' }
  end
  -- Only SMS codes are typed back: an OTP's hash is no code to guess at here.
  if not ok or type(data) ~= 'table' or data.method ~= 'sms' then
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
end

local reply = decide()
if reply[1] == R_MISSING or reply[1] == R_CORRUPT then
  reply[5] = ''
else
  reply[5] = raw_data or ''
end
return reply
