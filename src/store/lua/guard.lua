-- stepgate: the account guard (domain::guard::apply, then domain::guard::keep_until), one user's
-- state in one step. The conformance suite holds this script and the Rust rules to the same
-- outcomes.
--
-- KEYS[1]  `{prefix}guard:{<user key>}`, a HASH: f failures, lf last failure at, lu locked until,
--          p pushes since the last success, lp last push at, pb push blocked until (epoch ms),
--          i attempts in flight, iu when they are presumed lost, u the user id (for the admin list)
-- ARGV[1]  now, epoch ms from the gateway's (injectable) clock
-- ARGV[2]  the step: check | admit_push | begin | failure | success | refund | report | unlock
-- ARGV[3]  the user id
-- ARGV[11] how soon an attempt refused as busy may retry (ms)
-- ARGV[12] how long a begun attempt holds its share of the limit unsettled (ms)
-- ARGV[4..10] max_failures, lock_for, forget_after, max_pushes, push_backoff, max_push_backoff,
--          report_block (counts, and durations in ms)
--
-- Replies {kind, value, block}: Clear {0}, Blocked {1, until, block: 1 locked | 2 reported |
-- 3 fatigue | 4 busy}, Counted {2, failures}, LockedNow {3, until}, Reported {4, until}.
local key = KEYS[1]
local now = tonumber(ARGV[1])
local op = ARGV[2]
local max_failures = tonumber(ARGV[4])
local lock_for = tonumber(ARGV[5])
local forget_after = tonumber(ARGV[6])
local max_pushes = tonumber(ARGV[7])
local push_backoff = tonumber(ARGV[8])
local max_push_backoff = tonumber(ARGV[9])
local report_block = tonumber(ARGV[10])

local f = redis.call('HMGET', key, 'f', 'lf', 'lu', 'p', 'lp', 'pb', 'i', 'iu')
local s = {
  f = tonumber(f[1]) or 0,
  lf = tonumber(f[2]),
  lu = tonumber(f[3]),
  p = tonumber(f[4]) or 0,
  lp = tonumber(f[5]),
  pb = tonumber(f[6]),
  i = tonumber(f[7]) or 0,
  iu = tonumber(f[8]),
}
local in_flight_ttl = tonumber(ARGV[12])

local function active(ends)
  if ends and now < ends then
    return ends
  end
  return nil
end

-- guard::push_wait
local function push_wait(pushes)
  local beyond = math.min(math.max(pushes - max_pushes, 0), 31)
  return math.min(push_backoff * (2 ^ beyond), max_push_backoff)
end

-- guard::keep_until, then the write: the whole state with a TTL, or no key at all.
local function save()
  local keep = nil
  local function later(t)
    if t and (not keep or t > keep) then
      keep = t
    end
  end
  if s.lf then later(s.lf + forget_after) end
  later(s.lu)
  if s.lp then later(s.lp + math.max(push_wait(s.p), forget_after)) end
  later(s.pb)
  if s.i > 0 then later(s.iu) end
  if not keep or keep <= now then
    redis.call('DEL', key)
    return
  end
  redis.call('DEL', key)
  local fields = { 'f', s.f, 'p', s.p, 'i', s.i, 'u', ARGV[3] }
  for _, name in ipairs({ 'lf', 'lu', 'lp', 'pb', 'iu' }) do
    if s[name] then
      table.insert(fields, name)
      table.insert(fields, string.format('%d', s[name]))
    end
  end
  redis.call('HSET', key, unpack(fields))
  redis.call('PEXPIRE', key, string.format('%d', keep - now))
end

local locked = active(s.lu)

if op == 'check' then
  if locked then
    return { 1, locked, 1 }
  end
  return { 0, 0, 0 }
elseif op == 'admit_push' then
  if locked then
    return { 1, locked, 1 }
  end
  local reported = active(s.pb)
  if reported then
    return { 1, reported, 2 }
  end
  if max_pushes > 0 and s.p >= max_pushes and s.lp then
    local ends = s.lp + push_wait(s.p)
    if now < ends then
      return { 1, ends, 3 }
    end
  end
  s.p = s.p + 1
  s.lp = now
  save()
  return { 0, 0, 0 }
elseif op == 'begin' then
  if locked then
    return { 1, locked, 1 }
  end
  if s.lf and now >= s.lf + forget_after then
    s.f = 0
  end
  if s.iu and now >= s.iu then
    s.i = 0
  end
  if max_failures > 0 and s.f + s.i >= max_failures then
    -- The attempts in flight take the limit; the lock follows if they fail.
    return { 1, now + tonumber(ARGV[11]), 4 }
  end
  s.i = s.i + 1
  s.iu = now + in_flight_ttl
  save()
  return { 0, 0, 0 }
elseif op == 'failure' then
  s.i = math.max(s.i - 1, 0)
  if locked then
    save()
    return { 1, locked, 1 }
  end
  if s.lf and now >= s.lf + forget_after then
    s.f = 0
  end
  s.f = s.f + 1
  s.lf = now
  if max_failures > 0 and s.f >= max_failures then
    s.lu = now + lock_for
    s.f = 0
    s.lf = nil
    save()
    return { 3, s.lu, 0 }
  end
  save()
  return { 2, s.f, 0 }
elseif op == 'success' then
  s.i = math.max(s.i - 1, 0)
  s.f = 0
  s.lf = nil
  s.p = 0
  s.lp = nil
  save()
  return { 0, 0, 0 }
elseif op == 'refund' then
  s.i = math.max(s.i - 1, 0)
  save()
  return { 0, 0, 0 }
elseif op == 'report' then
  s.pb = now + report_block
  save()
  return { 4, s.pb, 0 }
elseif op == 'unlock' then
  redis.call('DEL', key)
  return { 0, 0, 0 }
end
return redis.error_reply('unknown guard step ' .. tostring(op))
