-- complete: complete a batch of chunks of one run, atomically.
-- Runs last in a MULTI that first sends `HSETNX results <chunk> <packed
--   values>` for each chunk (K x n f64, output after output): the values
--   never pass through Lua, whose strings hash every byte they hold. So
--   the results field of a chunk is either the winner's (done bit set:
--   HSETNX changed nothing) or was just written by this very delivery.
-- KEYS (9): run hash, done bitmap, results hash, events stream, tasks
--   stream, dead bitmap, stats hash, expiring zset, extremes string (per
--   chunk, its K (min, max) f64 pairs, at offset chunk * 16 K).
-- ARGV (5 + 5 per chunk): group, run id, consumer, K (outputs), compute
--   µs of the batch's chunks (the agent's measure, charged to the run's
--   agent time for the chunks held, each at most as long as the held one
--   first in the batch was: its entry id's ms); then per chunk: entry id,
--   chunk index, point count, ChunkCompleted event body, stats
--   (little-endian f64: K (min, max) pairs, then K (sum, index of the
--   first min, index of the first max) triples). Chunks in entry id order
--   cost least (one ownership lookup for the batch); any order is correct.
--   The batch's ChunkCompleted events go in as one entry of the events
--   stream (prelude.lua, emit_batch).
-- Returns {codes, state}: per chunk 1 counted, 0 duplicate, 2 run not
--   active, -1 run unknown, -3 not held by the caller; the run's state after.
-- Invariant: first result wins — a chunk's values are stored and counted
--   at most once (its done bit), and only for a delivery still pending for
--   the caller; result, ack, counters, per-output aggregates, the chunk's
--   extremes (what Best prunes chunks with) and events never disagree;
--   every chunk not counted here and not done loses the field the MULTI
--   wrote, so a results field without its done bit outlives no script
--   (fail_attempt removes the one a MULTI whose script never ran, say on
--   NOSCRIPT, left for its delivery); the run's in-flight count falls by
--   exactly the deliveries acked here.
local run = KEYS[1]
local K = tonumber(ARGV[4])
local S = 5
local n = (#ARGV - 5) / S
local stats_fmt = '<' .. string.rep('d', 5 * K)
local ids, held, codes = {}, {}, {}
-- Chunks this call does not count and that are not done: the values the
-- MULTI just wrote for them go again.
local drop = {}
local function drop_unless_done(chunk)
  if redis.call('GETBIT', KEYS[2], chunk) == 0 then drop[#drop + 1] = chunk end
end
local function dropped()
  if #drop > 0 then redis.call('HDEL', KEYS[3], unpack(drop)) end
end
-- Which entries are pending for the caller: one XPENDING over the range
-- from the first entry id to the last (agents send them in order; the
-- caller's other deliveries in the range come along, at most 2n + 64),
-- then one lookup per entry that read did not show (out of order, past
-- its limit, or not the caller's).
local mine = {}
if n > 1 then
  for _, e in ipairs(redis.call('XPENDING', KEYS[5], ARGV[1], ARGV[6], ARGV[6 + (n - 1) * S],
      2 * n + 64, ARGV[3])) do
    mine[e[1]] = true
  end
end
for i = 0, n - 1 do
  local b = 6 + i * S
  local id = ARGV[b]
  codes[i + 1] = -3
  if mine[id] or #redis.call('XPENDING', KEYS[5], ARGV[1], id, id, 1, ARGV[3]) > 0 then
    held[i] = true
    ids[#ids + 1] = id
  elseif redis.call('GETBIT', KEYS[2], ARGV[b + 1]) == 1 then
    -- Already counted (e.g. this very call, retried after its reply was
    -- lost): a duplicate, and nothing to change.
    codes[i + 1] = 0
  else
    drop[#drop + 1] = ARGV[b + 1]
  end
end
if #ids == 0 then dropped(); return {codes, ''} end
redis.call('XACK', KEYS[5], ARGV[1], unpack(ids))
redis.call('XDEL', KEYS[5], unpack(ids))
local ts = now_ms()
local used = (tonumber(ARGV[5]) or 0) * #ids / n
local most = #ids * (ts - (tonumber(string.match(ids[1], '^(%d+)')) or ts) + 1) * 1000
if used > most then used = most end
if used < 0 then used = 0 end
release(run, #ids, floor(used))
local function fld(name, k) if k == 0 then return name end return name .. ':' .. k end
local want = {'state', 'total', 'done', 'dead', 'count', 'ff_n'}
for k = 0, K - 1 do want[#want + 1] = fld('min', k); want[#want + 1] = fld('max', k) end
local v = redis.call('HMGET', run, unpack(want))
local state = v[1]
if not state or not active(state) then
  local code = 2
  if not state then code = -1; state = '' end
  for i = 0, n - 1 do
    if held[i] then codes[i + 1] = code; drop_unless_done(ARGV[6 + i * S + 1]) end
  end
  dropped()
  return {codes, state}
end
local total, done, dead, count = num(v[2]), num(v[3]), num(v[4]), num(v[5])
local mn, mx, mn_s, mx_s, amin, amax, sum = {}, {}, {}, {}, {}, {}, {}
for k = 0, K - 1 do
  mn[k], mx[k], sum[k] = tonumber(v[7 + 2 * k]), tonumber(v[8 + 2 * k]), 0
end
-- Each ChunkCompleted event is its body, the time (field 3) and the
-- run's progress after it (field 4: total, done, dead, count), built in
-- one concatenation: the parts that do not change per chunk are encoded
-- once per batch (progress_of's encoding, unrolled).
local ts_f = f_varint(3, ts)
local total_f = '\8' .. varint(total)
local dead_f = '\24' .. varint(dead)
local counted, dups = 0, 0
-- The batch's ChunkCompleted events, each length-delimited, appended as
-- one entry (emit_batch).
local evs = {}
-- Extremes waiting to be written: chunks ext_at .. ext_next - 1.
local ext_at, ext_next, ext
local function put_ext()
  if ext_at then redis.call('SETRANGE', KEYS[9], ext_at * 16 * K, table.concat(ext)) end
end
for i = 0, n - 1 do
  local b = 6 + i * S
  local chunk = ARGV[b + 1]
  if not held[i] then
    -- not ours: code stays -3
  elseif redis.call('SETBIT', KEYS[2], chunk, 1) == 1 then
    codes[i + 1] = 0
    dups = dups + 1
  else
    codes[i + 1] = 1
    counted = counted + 1
    if dead > 0 and redis.call('GETBIT', KEYS[6], chunk) == 1 then
      redis.call('SETBIT', KEYS[6], chunk, 0)
      dead = dead - 1
      dead_f = '\24' .. varint(dead)
    end
    done = done + 1
    count = count + tonumber(ARGV[b + 2])
    local st = ARGV[b + 4]
    local x = {struct.unpack(stats_fmt, st)}
    for k = 0, K - 1 do
      local lo, hi, t = x[1 + 2 * k], x[2 + 2 * k], 2 * K + 3 * k
      sum[k] = sum[k] + x[t + 1]
      if not mn[k] or lo < mn[k] then mn[k] = lo; mn_s[k] = true; amin[k] = x[t + 2] end
      if not mx[k] or hi > mx[k] then mx[k] = hi; mx_s[k] = true; amax[k] = x[t + 3] end
    end
    -- The chunk's extremes, for Best to know which chunks to read:
    -- written by one SETRANGE per run of consecutive chunks.
    local at = tonumber(chunk)
    if ext_at and at == ext_next then
      ext[#ext + 1] = string.sub(st, 1, 16 * K)
    else
      put_ext()
      ext_at, ext = at, {string.sub(st, 1, 16 * K)}
    end
    ext_next = at + 1
    local body, d, c = ARGV[b + 3], varint(done), varint(count)
    local m = #total_f + 1 + #d + #dead_f + 1 + #c
    -- Length-delimited, as emit_batch takes it.
    evs[#evs + 1] = varint(#body + #ts_f + 2 + m) .. body .. ts_f .. '\34' .. char(m) .. total_f
      .. '\16' .. d .. dead_f .. '\32' .. c
  end
end
put_ext()
dropped()
emit_batch(KEYS[4], evs, ts)
if dups > 0 then redis.call('HINCRBY', KEYS[7], 'duplicates', dups) end
if counted == 0 then return {codes, state} end
redis.call('HINCRBY', KEYS[7], 'completed', counted)
local upd = {'done', done, 'count', count, 'dead', dead}
if num(v[6]) > 0 then upd[#upd + 1] = 'ff_n'; upd[#upd + 1] = 0 end
for k = 0, K - 1 do
  -- One addition per output per batch (each costs a decimal parse and
  -- print in Redis).
  redis.call('HINCRBYFLOAT', run, fld('sum', k), string.format('%.17g', sum[k]))
  -- %.17g reads back as the same double.
  if mn_s[k] then
    upd[#upd + 1] = fld('min', k); upd[#upd + 1] = string.format('%.17g', mn[k])
    upd[#upd + 1] = fld('amin', k); upd[#upd + 1] = string.format('%d', amin[k])
  end
  if mx_s[k] then
    upd[#upd + 1] = fld('max', k); upd[#upd + 1] = string.format('%.17g', mx[k])
    upd[#upd + 1] = fld('amax', k); upd[#upd + 1] = string.format('%d', amax[k])
  end
end
if state == 'QUEUED' then
  upd[#upd + 1] = 'state'; upd[#upd + 1] = 'RUNNING'
  upd[#upd + 1] = 'started_ms'; upd[#upd + 1] = ts
end
redis.call('HSET', run, unpack(upd))
return {codes, finish_if_done(run, KEYS[4], ARGV[2], ts, KEYS[7], KEYS[8])}
