#!lua name=backfill_v2
--[[
The library's name carries its version (2 here; releases before versions named it
"backfill", which counts as 1). Raise it when a function changes what it does:
a process loads these functions only over an older version (deleting it) or the
same one, and refuses to start when Redis holds a newer one, so an older binary
cannot bring back older functions while newer processes run on them. Workers and
their coordinator also compare it at HELLO/WELCOME (fv): raise it, too, when a
worker and a coordinator of the two releases could not work together otherwise.

Job state transitions, loaded with FUNCTION LOAD so they survive a Redis restart
(unlike the EVALSHA script cache). Every function takes KEYS[1] = "bf:{job}:meta";
the other keys of the job share its "bf:{job}:" prefix (one hash slot).

  bf:{job}:meta        hash: planned nranges (ranges in Redis: planned + split off)
                             next_id (the id the next split gets: at least nranges,
                             more when Redis lost splits whose ids the targets' fence
                             rows hold; absent in plans of older versions: nranges)
                             ntables created_ms epoch max_rejects
                             tbl:<t>:name tbl:<t>:ranges tbl:<t>:est tbl:<t>:after
                             ("2,5": tables done before t starts) tbl:<t>:ordered
                             waits (1: some table has tbl:<t>:after or :ordered);
                             live control:
                             paused cancel rate (rows/s) backoff
  bf:{job}:range:<id>  hash: tbl lo hi state token owner seq cursor rows bytes
                             attempts est last_error done_by split_from
                             defers defer_mark (bf_defer)
                             (lo/hi/cursor absent = open; owner: the worker that holds
                             or last held it, "@coordinator:<epoch>" while in that
                             coordinator's pool of leases taken ahead)
  bf:{job}:pending     zset of range ids waiting for a lease (score = id)
  bf:{job}:waiting:<t> zset of the ranges of table t while it waits for the tables
                       listed in meta tbl:<t>:after (its target tables refer to theirs
                       by foreign keys): moved to pending when those are all done.
                       A table whose target table refers to itself (meta
                       tbl:<t>:ordered 1) has its ranges copied one after another in
                       key order: all but the one in work wait here, and the lowest
                       moves to pending when the others are done (a parent row
                       usually has a smaller key than its children)
  bf:{job}:delayed     zset of ranges set back for a while (score = ms, Redis clock):
                       a batch referred to rows the target does not have yet
  bf:{job}:leases      zset of leased range ids by expiry (ms, Redis clock)
  bf:{job}:fence       counter: every lease gets a new, larger fencing token
  bf:{job}:tat         throttle: ms at which the row budget handed out is used up
  bf:{job}:stats       hash: rows:<tbl> bytes:<tbl> done:<tbl> failed:<tbl> rejects:<tbl>
                             parked:<tbl> done_total batches retries rejects_total
                             parked_total splits (parked: rows kept on the targets
                             until every range is done, referring to rows the
                             target did not have; the coordinator sets them to
                             what is still parked after writing them again)
                             lat:<bucket> lat_sum_ms (batch durations)

Cursors and keys are opaque strings; tokens are compared as strings of digits
(they stay below 2^53, so they round-trip exactly through Lua numbers too).
]]

local function prefix(meta)
  return string.sub(meta, 1, #meta - 4)
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- bf_lease(meta; ttl_ms, owner1, owner2, ...) -> {lease1, lease2, ...}
--   one lease {id, token, tbl, lo, hi, cursor, seq} per owner, in order, fewer when
--   the pending ranges run out (the coordinator hands many out in one call). Few
--   Redis calls per lease: the coordinator's hand-out rate is bounded by this.
local function bf_lease(keys, args)
  local p = prefix(keys[1])
  local exp = now_ms() + tonumber(args[1])
  local out = {}
  local zadd = {}
  local want = #args - 1
  -- ranges set back by bf_defer whose time has come
  local due = redis.call('ZRANGEBYSCORE', p .. 'delayed', '-inf', exp - tonumber(args[1]))
  for _, id in ipairs(due) do
    redis.call('ZREM', p .. 'delayed', id)
    redis.call('ZADD', p .. 'pending', tonumber(id), id)
  end
  while #out < want do
    local popped = redis.call('ZPOPMIN', p .. 'pending', want - #out)
    if #popped == 0 then
      break
    end
    -- one fence step for the batch: tokens base+1 .. base+n, each used once
    local n = #popped / 2
    local base = redis.call('INCRBY', p .. 'fence', n) - n
    for i = 1, #popped, 2 do
      local id = popped[i]
      local rk = p .. 'range:' .. id
      local r = redis.call('HMGET', rk, 'state', 'tbl', 'lo', 'hi', 'cursor', 'seq', 'attempts')
      if r[1] == 'pending' then -- else a stale entry (the range moved on): skip it
        local token = base + (i + 1) / 2
        redis.call('HSET', rk, 'state', 'leased', 'token', token, 'owner', args[2 + #out],
                   'attempts', tonumber(r[7] or '0') + 1)
        zadd[#zadd + 1] = exp
        zadd[#zadd + 1] = id
        out[#out + 1] = {id, tostring(token), r[2], r[3], r[4], r[5], r[6] or '0'}
      end
    end
  end
  if #zadd > 0 then
    redis.call('ZADD', p .. 'leases', unpack(zadd))
  end
  return out
end

-- True when every range of table t is done.
local function table_done(meta, p, t)
  local ranges = tonumber(redis.call('HGET', meta, 'tbl:' .. t .. ':ranges') or '0')
  return tonumber(redis.call('HGET', p .. 'stats', 'done:' .. t) or '0') >= ranges
end

-- Table t's ranges are copied in key order (meta tbl:<t>:ordered).
local function ordered(meta, t)
  return redis.call('HGET', meta, 'tbl:' .. t .. ':ordered') == '1'
end

-- An ordered table's next range (its lowest waiting one) to pending when every
-- other range of the table is done. (One set back by bf_defer holds the next up: a
-- row referring to a later range would, in the usual chained data, wait for rows
-- that wait for it; when nothing else can commit, bf_defer says 'NO' and the
-- worker isolates that very row.) Returns 1 when one moved.
local function release_next(meta, p, t)
  local wk = p .. 'waiting:' .. t
  local left = redis.call('ZCARD', wk)
  if left == 0 then
    return 0
  end
  local ranges = tonumber(redis.call('HGET', meta, 'tbl:' .. t .. ':ranges') or '0')
  local done = tonumber(redis.call('HGET', p .. 'stats', 'done:' .. t) or '0')
  if ranges - done - left > 0 then
    return 0
  end
  local low = redis.call('ZPOPMIN', wk)
  redis.call('ZADD', p .. 'pending', low[2], low[1])
  return 1
end

-- Moves the ranges of every waiting table whose tables to wait for are all done to
-- pending (an ordered table's next one only); returns how many ranges moved.
local function release_waiting(meta, p)
  if redis.call('HGET', meta, 'waits') ~= '1' then
    return 0
  end
  local n = tonumber(redis.call('HGET', meta, 'ntables') or '0')
  local moved = 0
  for t = 0, n - 1 do
    local wk = p .. 'waiting:' .. t
    if redis.call('EXISTS', wk) == 1 then
      local ready = true
      for u in string.gmatch(redis.call('HGET', meta, 'tbl:' .. t .. ':after') or '', '%d+') do
        if not table_done(meta, p, u) then
          ready = false
          break
        end
      end
      if ready and ordered(meta, t) then
        moved = moved + release_next(meta, p, t)
      elseif ready then
        moved = moved + redis.call('ZCARD', wk)
        redis.call('ZUNIONSTORE', p .. 'pending', 2, p .. 'pending', wk)
        redis.call('DEL', wk)
      end
    end
  end
  return moved
end

-- Batch duration histogram buckets (ms; the last is +Inf), for /metrics.
local LAT_BOUNDS = {50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000}

-- bf_checkpoint(meta; id, token, seq, cursor, has_cursor, rows, bytes, final, ttl_ms, rejects,
--               batch_ms, hi, who, parked)
--   -> 'OK' | 'DUP' (this seq was applied already) | 'STALE' (token superseded)
--   batch_ms (optional, -1 = not measured) goes into the stats' lat:<bucket> counts.
--   hi (optional): the range's end as the worker knows it, '=' .. key or '-' (open).
--   A final checkpoint whose hi differs from the stored one is refused (STALE): the
--   range was split by its owner and Redis lost that split (a restart without
--   it); marking the range done would skip the split-off part.
--   who (optional): the worker's id, recorded as done_by (else the lease's owner,
--   which for a lease from the coordinator's pool may not be named yet).
--   parked (optional): rows of the batch parked on the targets (refused for a
--   missing referenced row, written again when every range is done).
local function bf_checkpoint(keys, args)
  local p = prefix(keys[1])
  local id, token, seq = args[1], args[2], tonumber(args[3])
  local rk = p .. 'range:' .. id
  local cur = redis.call('HMGET', rk, 'token', 'seq', 'state', 'tbl', 'owner', 'hi', 'rows',
                         'bytes')
  if not cur[3] then
    return redis.error_reply('NORANGE range ' .. id .. ' does not exist')
  end
  if args[8] == '1' and args[12] and args[12] ~= '' then
    local stored = cur[6] and ('=' .. cur[6]) or '-'
    if stored ~= args[12] then
      return 'STALE'
    end
  end
  if cur[1] ~= token then
    return 'STALE'
  end
  if cur[3] == 'done' or seq <= tonumber(cur[2] or '0') then
    return 'DUP'
  end
  if cur[3] == 'failed' then
    return 'STALE' -- given up on; a retry leases it anew and adopts the target's fence
  end
  local tbl = cur[4]
  local rows = tonumber(cur[7] or '0') + tonumber(args[6])
  local bytes = tonumber(cur[8] or '0') + tonumber(args[7])
  local final = args[8] == '1'
  local by = (args[13] and args[13] ~= '') and args[13] or cur[5] or ''
  -- (Few calls: every one costs the Lua-to-Redis crossing and an AOF entry, and
  -- this runs once per batch of every worker.)
  if args[5] == '1' and final then
    redis.call('HSET', rk, 'seq', args[3], 'cursor', args[4], 'rows', rows, 'bytes', bytes,
               'state', 'done', 'done_by', by)
  elseif args[5] == '1' then
    redis.call('HSET', rk, 'seq', args[3], 'cursor', args[4], 'rows', rows, 'bytes', bytes)
  elseif final then
    redis.call('HSET', rk, 'seq', args[3], 'rows', rows, 'bytes', bytes, 'state', 'done',
               'done_by', by)
    redis.call('HDEL', rk, 'cursor')
  else
    redis.call('HSET', rk, 'seq', args[3], 'rows', rows, 'bytes', bytes)
    redis.call('HDEL', rk, 'cursor')
  end
  local st = p .. 'stats'
  redis.call('HINCRBY', st, 'rows:' .. tbl, args[6])
  redis.call('HINCRBY', st, 'bytes:' .. tbl, args[7])
  redis.call('HINCRBY', st, 'batches', 1)
  local ms = tonumber(args[11] or '-1')
  if ms >= 0 then
    local b = #LAT_BOUNDS + 1
    for i, bound in ipairs(LAT_BOUNDS) do
      if ms <= bound then
        b = i
        break
      end
    end
    redis.call('HINCRBY', st, 'lat:' .. b, 1)
    redis.call('HINCRBY', st, 'lat_sum_ms', ms)
  end
  local rejects = tonumber(args[10] or '0')
  if rejects > 0 then
    redis.call('HINCRBY', rk, 'rejects', rejects)
    redis.call('HINCRBY', st, 'rejects:' .. tbl, rejects)
    redis.call('HINCRBY', st, 'rejects_total', rejects)
  end
  local parked = tonumber(args[14] or '0')
  if parked > 0 then
    redis.call('HINCRBY', st, 'parked:' .. tbl, parked)
    redis.call('HINCRBY', st, 'parked_total', parked)
  end
  if final then
    -- a leased range is in the lease set; one put back (its lease was lost, this
    -- late checkpoint still holds the token) is pending
    if cur[3] == 'leased' then
      redis.call('ZREM', p .. 'leases', id)
    else
      redis.call('ZREM', p .. 'pending', id)
    end
    redis.call('HINCRBY', st, 'done:' .. tbl, 1)
    redis.call('HINCRBY', st, 'done_total', 1)
    if table_done(keys[1], p, tbl) then
      release_waiting(keys[1], p) -- tables that waited for this one may start
    elseif ordered(keys[1], tbl) then
      release_next(keys[1], p, tbl)
    end
  elseif cur[3] == 'leased' then
    redis.call('ZADD', p .. 'leases', now_ms() + tonumber(args[9]), id)
  end
  return 'OK'
end

-- bf_renew(meta; ttl_ms, id1, token1, id2, token2, ...) -> ids no longer held
local function bf_renew(keys, args)
  local p = prefix(keys[1])
  local exp = now_ms() + tonumber(args[1])
  local lost = {}
  for i = 2, #args - 1, 2 do
    local id, token = args[i], args[i + 1]
    local rk = p .. 'range:' .. id
    local cur = redis.call('HMGET', rk, 'token', 'state')
    if cur[1] == token and cur[2] == 'leased' then
      redis.call('ZADD', p .. 'leases', exp, id)
    elseif cur[2] ~= 'done' then
      lost[#lost + 1] = id
    end
  end
  return lost
end

-- bf_release(meta; id, token, reason, counts_as_attempt, max_attempts)
--   -> 'PENDING' | 'FAILED' (attempts exhausted) | 'STALE'
local function bf_release(keys, args)
  local p = prefix(keys[1])
  local id, token = args[1], args[2]
  local rk = p .. 'range:' .. id
  local cur = redis.call('HMGET', rk, 'token', 'state', 'attempts', 'tbl')
  if cur[1] ~= token or cur[2] ~= 'leased' then
    return 'STALE'
  end
  redis.call('ZREM', p .. 'leases', id)
  redis.call('HDEL', rk, 'owner')
  if args[3] ~= '' then
    redis.call('HSET', rk, 'last_error', args[3])
  end
  local attempts = tonumber(cur[3] or '0')
  if args[4] ~= '1' then
    attempts = attempts - 1
    redis.call('HSET', rk, 'attempts', attempts)
  else
    redis.call('HINCRBY', p .. 'stats', 'retries', 1)
  end
  if args[4] == '1' and attempts >= tonumber(args[5]) then
    redis.call('HSET', rk, 'state', 'failed')
    redis.call('HINCRBY', p .. 'stats', 'failed:' .. cur[4], 1)
    redis.call('HINCRBY', p .. 'stats', 'failed_total', 1)
    return 'FAILED'
  end
  redis.call('HSET', rk, 'state', 'pending')
  redis.call('ZADD', p .. 'pending', tonumber(id), id)
  return 'PENDING'
end

-- bf_defer(meta; id, token, reason, delay_ms) -> {'DEFERRED', ms} | {'NO', 0} | {'STALE', 0}
--   a batch of lease (id, token) referred to rows the target does not have (a
--   foreign key): the range goes back, not counted as an attempt, and is leased
--   again in delay_ms (doubling with each deferral of the range, at most 8 times
--   delay_ms) - unless no batch of the job was committed since its last deferral:
--   then waiting cannot help ('NO'; the worker isolates the row).
local function bf_defer(keys, args)
  local p = prefix(keys[1])
  local id, token = args[1], args[2]
  local rk = p .. 'range:' .. id
  local cur = redis.call('HMGET', rk, 'token', 'state', 'defer_mark', 'defers')
  if cur[1] ~= token or cur[2] ~= 'leased' then
    return {'STALE', 0}
  end
  local batches = tonumber(redis.call('HGET', p .. 'stats', 'batches') or '0')
  if cur[3] and tonumber(cur[3]) >= batches then
    return {'NO', 0}
  end
  local defers = tonumber(cur[4] or '0')
  local delay = tonumber(args[4]) * 2 ^ math.min(defers, 3)
  redis.call('ZREM', p .. 'leases', id)
  redis.call('HDEL', rk, 'owner')
  redis.call('HINCRBY', rk, 'attempts', -1)
  redis.call('HSET', rk, 'state', 'pending', 'defer_mark', batches, 'defers', defers + 1,
             'last_error', args[3])
  redis.call('ZADD', p .. 'delayed', now_ms() + delay, id)
  redis.call('HINCRBY', p .. 'stats', 'deferred', 1)
  return {'DEFERRED', delay}
end

-- bf_floor(meta; target_max [, next_id]) -> {token increase, 1 when next_id was raised}
--   target_max: the largest token the targets hold. Below it, Redis lost writes (a
--   failover, a crash with appendfsync everysec), and tokens it issued before are
--   unknown: the counter jumps a million past, so that none is issued twice.
--   next_id: one more than the largest range id the targets' fence rows hold;
--   above the meta's next_id, Redis lost a split whose part has fence rows: the
--   next split must not get its id (bf_split takes it back by want_id).
local function bf_floor(keys, args)
  local p = prefix(keys[1])
  local m = redis.call('HMGET', keys[1], 'planned', 'next_id', 'nranges')
  if m[1] ~= '1' then
    return {0, 0} -- no plan (Redis emptied): nothing to raise, and nothing to create
  end
  local cur = tonumber(redis.call('GET', p .. 'fence') or '0')
  local max = tonumber(args[1])
  local inc = 0
  if cur < max then
    redis.call('SET', p .. 'fence', string.format('%d', max + 1000000))
    inc = max + 1000000 - cur
  end
  local raised = 0
  local want = tonumber(args[2] or '0')
  if want > tonumber(m[2] or m[3] or '0') then
    redis.call('HSET', keys[1], 'next_id', want)
    raised = 1
  end
  return {inc, raised}
end

-- bf_unblock(meta) -> ranges of waiting tables moved to pending (their tables to
--   wait for are done): run by a coordinator at start, in case a table finished
--   without releasing them (a plan stored by hand, a Redis that lost writes).
local function bf_unblock(keys, args)
  return release_waiting(keys[1], prefix(keys[1]))
end

-- Puts leased range rk (id) back to pending without counting an attempt.
local function unlease(p, rk, id)
  redis.call('ZREM', p .. 'leases', id)
  redis.call('HDEL', rk, 'owner')
  redis.call('HINCRBY', rk, 'attempts', -1)
  redis.call('HSET', rk, 'state', 'pending')
  redis.call('ZADD', p .. 'pending', tonumber(id), id)
end

-- bf_unpool(meta; owner_prefix [, id1, token1, id2, token2, ...]) -> number released
--   returns leases a coordinator took ahead and did not hand out to pending, not
--   counted as attempts: the given ones (a coordinator stopping), or, with no ids,
--   every lease whose owner starts with owner_prefix (a coordinator starting,
--   for the pool of one that died). Only leases still owned so are touched.
local function bf_unpool(keys, args)
  local p = prefix(keys[1])
  local pre = args[1]
  local ids = {}
  if #args >= 3 then
    for i = 2, #args - 1, 2 do
      ids[#ids + 1] = {args[i], args[i + 1]}
    end
  else
    for _, id in ipairs(redis.call('ZRANGE', p .. 'leases', 0, -1)) do
      ids[#ids + 1] = {id, nil}
    end
  end
  local n = 0
  for _, e in ipairs(ids) do
    local rk = p .. 'range:' .. e[1]
    local cur = redis.call('HMGET', rk, 'token', 'state', 'owner')
    if cur[2] == 'leased' and (e[2] == nil or cur[1] == e[2]) and cur[3] and
        string.sub(cur[3], 1, #pre) == pre then
      unlease(p, rk, e[1])
      n = n + 1
    end
  end
  return n
end

-- bf_reap(meta) -> ids whose lease expired and went back to pending
local function bf_reap(keys, args)
  local p = prefix(keys[1])
  local ids = redis.call('ZRANGEBYSCORE', p .. 'leases', '-inf', now_ms())
  for _, id in ipairs(ids) do
    local rk = p .. 'range:' .. id
    redis.call('ZREM', p .. 'leases', id)
    if redis.call('HGET', rk, 'state') == 'leased' then
      redis.call('HSET', rk, 'state', 'pending')
      redis.call('HDEL', rk, 'owner')
      redis.call('ZADD', p .. 'pending', tonumber(id), id)
      redis.call('HINCRBY', p .. 'stats', 'retries', 1)
    end
  end
  return ids
end

-- bf_split(meta; id, token, key, est_new, est_kept [, want_id [, floor]]) -> new range id
--   | 'STALE' | 'TAKEN'
--   the owner of lease (id, token), between batches, gives up [key, hi) of its range:
--   its hi becomes key and [key, old hi) is a new pending range of the same table.
--   The owner picked key past its cursor (only the source can compare keys), so no
--   row is in both parts and none in neither. want_id (>= 0): the id the part had
--   before Redis lost this split (its fence rows on the targets carry it); 'TAKEN'
--   when another range has it. Else the part gets next_id, or floor when that is
--   larger: one more than the largest range id in the fence rows of the owner's
--   targets, so that an id Redis lost with a split is not given again while those
--   rows hold it.
local function bf_split(keys, args)
  local p = prefix(keys[1])
  local id, token, key = args[1], args[2], args[3]
  local rk = p .. 'range:' .. id
  local cur = redis.call('HMGET', rk, 'token', 'state', 'tbl', 'hi', 'rows')
  if cur[1] ~= token or cur[2] ~= 'leased' then
    return 'STALE'
  end
  local want = tonumber(args[6] or '-1')
  local m = redis.call('HMGET', keys[1], 'next_id', 'nranges')
  local nxt = tonumber(m[1] or m[2] or '0')
  local nid
  if want >= 0 and redis.call('EXISTS', p .. 'range:' .. want) == 1 then
    return 'TAKEN'
  elseif want >= 0 then
    nid = want
  else
    nid = math.max(nxt, tonumber(args[7] or '0'))
  end
  redis.call('HINCRBY', keys[1], 'nranges', 1)
  if nid >= nxt then
    redis.call('HSET', keys[1], 'next_id', nid + 1)
  end
  local nk = p .. 'range:' .. nid
  local left = tonumber(args[4])
  redis.call('HSET', nk, 'tbl', cur[3], 'state', 'pending', 'seq', 0, 'rows', 0, 'bytes', 0,
             'attempts', 0, 'est', left, 'lo', key, 'split_from', id)
  if cur[4] then
    redis.call('HSET', nk, 'hi', cur[4])
  end
  -- estimates (rows): the new part's, and what the owner has copied and has left
  redis.call('HSET', rk, 'hi', key, 'est', tonumber(cur[5] or '0') + tonumber(args[5]))
  redis.call('HINCRBY', keys[1], 'tbl:' .. cur[3] .. ':ranges', 1)
  redis.call('HINCRBY', p .. 'stats', 'splits', 1)
  redis.call('ZADD', p .. 'pending', nid, tostring(nid))
  return nid
end

-- bf_admit(meta; rows) -> {state, rows, wait_ms}
--   asked by a worker before each batch. state: 'run', 'paused' or 'cancel' (meta
--   fields paused / cancel, set by `backfill pause|cancel`), or 'backoff' (meta
--   field backoff: the coordinator's throttle_query is above throttle_max). With a rate (meta 'rate',
--   rows/s over all workers, `backfill throttle`): a batch is at most a quarter
--   second of the rate, and the worker waits wait_ms before it, so that batches
--   start no faster than the rate allows (a shared virtual clock, bf:{job}:tat,
--   the time at which the budget handed out so far is used up; no burst credit).
local function bf_admit(keys, args)
  local m = redis.call('HMGET', keys[1], 'paused', 'cancel', 'rate', 'backoff')
  local rows = tonumber(args[1])
  if m[2] == '1' then
    return {'cancel', 0, 0}
  end
  if m[1] == '1' then
    return {'paused', 0, 0}
  end
  if m[4] then
    return {'backoff', 0, 0}
  end
  local rate = tonumber(m[3] or '0')
  if rate <= 0 then
    return {'run', rows, 0}
  end
  if rows > rate / 4 then
    rows = math.max(1, math.floor(rate / 4))
  end
  local p = prefix(keys[1])
  local now = now_ms()
  local tat = tonumber(redis.call('GET', p .. 'tat') or '0')
  if tat < now then
    tat = now
  end
  local wait = tat - now
  local next_tat = tat + rows * 1000 / rate
  -- kept a minute past the time it stands for, so that a long queue is not forgotten
  redis.call('SET', p .. 'tat', string.format('%.3f', next_tat), 'PX',
             math.floor(next_tat - now) + 60000)
  return {'run', rows, math.floor(wait)}
end

-- The job's coordinator lock (KEYS[1] = bf:{job}:lock), its value naming the
-- holder: one coordinator per job at a time.
-- bf_lock_take(lock; me, ttl_ms, stale) -> {1} taken, or {0, holder, pttl}. stale
-- is a holder the caller found gone (a process of its own machine that is not
-- running), '' for none: replaced as if free.
local function bf_lock_take(keys, args)
  local cur = redis.call('GET', keys[1])
  if not cur or cur == args[1] or (args[3] ~= '' and cur == args[3]) then
    redis.call('SET', keys[1], args[1], 'PX', tonumber(args[2]))
    return {1}
  end
  return {0, cur, redis.call('PTTL', keys[1])}
end

-- bf_lock_renew(lock; me, ttl_ms) -> {1} renewed, {2} taken again (it had
-- vanished: expired while Redis was out of reach, or Redis lost it), {0, holder}
-- another coordinator holds it.
local function bf_lock_renew(keys, args)
  local cur = redis.call('GET', keys[1])
  if cur == args[1] then
    redis.call('PEXPIRE', keys[1], tonumber(args[2]))
    return {1}
  end
  if not cur then
    redis.call('SET', keys[1], args[1], 'PX', tonumber(args[2]))
    return {2}
  end
  return {0, cur}
end

-- bf_lock_release(lock; me) -> 1 released, 0 not held by me
local function bf_lock_release(keys, args)
  if redis.call('GET', keys[1]) == args[1] then
    return redis.call('DEL', keys[1])
  end
  return 0
end

-- bf_retry_failed(meta) -> number of failed ranges put back to pending
local function bf_retry_failed(keys, args)
  local p = prefix(keys[1])
  local m = redis.call('HMGET', keys[1], 'next_id', 'nranges')
  local n = math.max(tonumber(m[1] or '0'), tonumber(m[2] or '0'))
  local count = 0
  for id = 0, n - 1 do
    local rk = p .. 'range:' .. id
    local cur = redis.call('HMGET', rk, 'state', 'tbl')
    if cur[1] == 'failed' then
      redis.call('HSET', rk, 'state', 'pending', 'attempts', 0)
      redis.call('ZADD', p .. 'pending', id, tostring(id))
      redis.call('HINCRBY', p .. 'stats', 'failed:' .. cur[2], -1)
      redis.call('HINCRBY', p .. 'stats', 'failed_total', -1)
      count = count + 1
    end
  end
  return count
end

redis.register_function('bf_lease', bf_lease)
redis.register_function('bf_unpool', bf_unpool)
redis.register_function('bf_checkpoint', bf_checkpoint)
redis.register_function('bf_renew', bf_renew)
redis.register_function('bf_release', bf_release)
redis.register_function('bf_defer', bf_defer)
redis.register_function('bf_unblock', bf_unblock)
redis.register_function('bf_floor', bf_floor)
redis.register_function('bf_reap', bf_reap)
redis.register_function('bf_retry_failed', bf_retry_failed)
redis.register_function('bf_split', bf_split)
redis.register_function('bf_admit', bf_admit)
redis.register_function('bf_lock_take', bf_lock_take)
redis.register_function('bf_lock_renew', bf_lock_renew)
redis.register_function('bf_lock_release', bf_lock_release)
