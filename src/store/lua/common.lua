-- stepgate: helpers prepended to every transaction script (verify, resend, finish).
-- They mirror `domain::regulation`; the store conformance suite holds both to the same outcomes.
--
-- KEYS[1]  the transaction hash, `{prefix}tx:{<uuid>}`
-- ARGV[1]  now, epoch milliseconds from the gateway's (injectable) clock
-- ARGV[2]  retention in milliseconds: a transaction is gone once now >= expires_at + retention
--
-- Every script replies {kind, a, b, status}; the Rust side maps it to the domain outcome.
local R_MISSING, R_OK, R_WRONG, R_EXHAUSTED, R_EXPIRED = 0, 1, 2, 3, 4
local R_NOT_PENDING, R_NO_CODE, R_DISABLED, R_LIMIT, R_CORRUPT = 5, 6, 7, 8, 9

local key = KEYS[1]
local now_arg = ARGV[1]
local now = tonumber(ARGV[1])
local retention = tonumber(ARGV[2])

-- The immutable JSON: the `data` field of a transaction stored whole (before 0.2), else its
-- `dn` chunks `d0`..: every value of the hash stays within Redis's listpack limit (64 bytes),
-- which keeps a pending transaction several times smaller. nil when missing or incomplete.
local function read_data()
  local whole = redis.call('HGET', key, 'data')
  if whole then
    return whole
  end
  local count = tonumber(redis.call('HGET', key, 'dn'))
  if not count or count < 1 then
    return nil
  end
  local names = {}
  for i = 0, count - 1 do
    names[#names + 1] = 'd' .. i
  end
  local parts = redis.call('HMGET', key, unpack(names))
  for i = 1, #parts do
    if not parts[i] then
      return nil
    end
  end
  return table.concat(parts)
end

-- Reads the mutable scalars. Returns the transaction, or nil and the reply to give instead.
local function load_tx()
  local f = redis.call('HMGET', key, 'status', 'attempts', 'max_attempts', 'resends',
    'max_resends', 'expires_at', 'code', 'user_id')
  if not f[1] then
    return nil, { R_MISSING, 0, 0, '' }
  end
  local tx = {
    status = f[1],
    attempts = tonumber(f[2]),
    max_attempts = tonumber(f[3]),
    resends = tonumber(f[4]),
    max_resends = tonumber(f[5]),
    expires_at = tonumber(f[6]),
    code = f[7] or '',
    user_id = f[8],
  }
  if not (tx.attempts and tx.max_attempts and tx.resends and tx.max_resends and tx.expires_at) then
    return nil, { R_CORRUPT, 0, 0, '' }
  end
  if now >= tx.expires_at + retention then
    -- Past its retention by the gateway's clock: treat it as evicted, as the memory store does.
    redis.call('DEL', key)
    return nil, { R_MISSING, 0, 0, '' }
  end
  return tx, nil
end

-- regulation::expire_if_due
local function expire_if_due(tx)
  if tx.status == 'pending' and now >= tx.expires_at then
    redis.call('HSET', key, 'status', 'expired', 'reason', 'expired', 'finished_at', now_arg)
    tx.status = 'expired'
    return true
  end
  return false
end

-- Constant-time equality of two strings of equal length (64-char hex HMACs): every byte is
-- visited and differences are accumulated with XOR/OR, so the time says nothing about where the
-- first difference is. Never compare codes with `==`.
local function ct_equal(a, b)
  if #a ~= #b then
    return false
  end
  local diff = 0
  for i = 1, #a do
    diff = bit.bor(diff, bit.bxor(string.byte(a, i), string.byte(b, i)))
  end
  return diff == 0
end

-- The opening every counting script shares: the transaction when it is pending and within its
-- lifetime, or the reply to give instead (missing, not pending, or just expired). With
-- `expected_user`, another user's transaction answers as missing and is not touched
-- (regulation::belongs_to), before anything else is looked at.
local function load_pending(expected_user)
  local tx, reply = load_tx()
  if not tx then
    return nil, reply
  end
  if expected_user and tx.user_id ~= expected_user then
    return nil, { R_MISSING, 0, 0, '' }
  end
  if tx.status ~= 'pending' then
    return nil, { R_NOT_PENDING, 0, 0, tx.status }
  end
  if expire_if_due(tx) then
    return nil, { R_EXPIRED, 0, 0, '' }
  end
  return tx, nil
end
