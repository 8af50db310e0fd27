-- complete: complete a batch of chunks of one run, atomically.
-- KEYS (9): run hash, done bitmap, results hash, events stream, tasks
--   stream, dead bitmap, stats hash, expiring zset, top-K hash.
-- ARGV (5 + 12 per chunk with K = 1; 5 + 7 K per chunk in general): group, run id, consumer, K (outputs),
--   T (top-K size); then per chunk: entry id, chunk index, point count,
--   packed values (K x n f64, output after output), ChunkCompleted event
--   body; then per output: sum, min, max, index of min, index of max; then
--   per output: its best-min and best-max candidates (packed little-endian
--   (value, index) f64 pairs, possibly empty).
-- Returns {codes, state, thresholds}: per chunk 1 counted, 0 duplicate,
--   2 run not active, -1 run unknown, -3 not held by the caller; the run's
--   state after; the top-K hash's `t` (2 K f64: per output the T-th best
--   min and max so far, NaN while fewer than T are kept) so the caller
--   sends only candidates that can still enter.
-- Invariant: first result wins — a chunk's values are stored and counted
--   at most once (its done bit), and only for a delivery still pending for
--   the caller; result, ack, counters, per-output aggregates, top-K and
--   events never disagree.
local run, top = KEYS[1], KEYS[9]
local K, T = tonumber(ARGV[4]), tonumber(ARGV[5])
local S = 5 + 7 * K
local n = (#ARGV - 5) / S
local ids, held, codes = {}, {}, {}
for i = 0, n - 1 do
  local b = 6 + i * S
  local id = ARGV[b]
  codes[i + 1] = -3
  if #redis.call('XPENDING', KEYS[5], ARGV[1], id, id, 1, ARGV[3]) > 0 then
    held[i] = true
    ids[#ids + 1] = id
  elseif redis.call('GETBIT', KEYS[2], ARGV[b + 1]) == 1 then
    -- Already counted (e.g. this very call, retried after its reply was
    -- lost): a duplicate, and nothing to change.
    codes[i + 1] = 0
  end
end
if #ids == 0 then return {codes, '', ''} end
redis.call('XACK', KEYS[5], ARGV[1], unpack(ids))
redis.call('XDEL', KEYS[5], unpack(ids))
local function fld(name, k) if k == 0 then return name end return name .. ':' .. k end
local want = {'state', 'total', 'done', 'dead', 'count', 'ff_n'}
for k = 0, K - 1 do want[#want + 1] = fld('min', k); want[#want + 1] = fld('max', k) end
local v = redis.call('HMGET', run, unpack(want))
local state = v[1]
if not state or not active(state) then
  local code = 2
  if not state then code = -1; state = '' end
  for i = 0, n - 1 do if held[i] then codes[i + 1] = code end end
  return {codes, state, ''}
end
local total, done, dead, count = num(v[2]), num(v[3]), num(v[4]), num(v[5])
local mn, mx, mn_s, mx_s, amin, amax, sum, cand = {}, {}, {}, {}, {}, {}, {}, {}
for k = 0, K - 1 do
  mn[k], mx[k], sum[k] = tonumber(v[7 + 2 * k]), tonumber(v[8 + 2 * k]), 0
  cand[2 * k], cand[2 * k + 1] = {}, {}
end
local ts = now_ms()
local ts_f = f_varint(3, ts)
local fields = {}
local counted, dups = 0, 0
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
    end
    fields[#fields + 1] = chunk
    fields[#fields + 1] = ARGV[b + 3]
    done = done + 1
    count = count + tonumber(ARGV[b + 2])
    for k = 0, K - 1 do
      local o = b + 5 + 5 * k
      sum[k] = sum[k] + tonumber(ARGV[o])
      local lo, hi = tonumber(ARGV[o + 1]), tonumber(ARGV[o + 2])
      if not mn[k] or lo < mn[k] then mn[k] = lo; mn_s[k] = ARGV[o + 1]; amin[k] = ARGV[o + 3] end
      if not mx[k] or hi > mx[k] then mx[k] = hi; mx_s[k] = ARGV[o + 2]; amax[k] = ARGV[o + 4] end
      local c = b + 5 + 5 * K + 2 * k
      if #ARGV[c] > 0 then table.insert(cand[2 * k], ARGV[c]) end
      if #ARGV[c + 1] > 0 then table.insert(cand[2 * k + 1], ARGV[c + 1]) end
    end
    redis.call('XADD', KEYS[4], '*', 'e', ARGV[b + 4] .. ts_f .. progress_of(total, done, dead, count))
  end
end
if dups > 0 then redis.call('HINCRBY', KEYS[7], 'duplicates', dups) end
local thr = redis.call('HGET', top, 't') or ''
if counted == 0 then return {codes, state, thr} end
redis.call('HSET', KEYS[3], unpack(fields))
redis.call('HINCRBY', KEYS[7], 'completed', counted)
local upd = {'done', done, 'count', count, 'dead', dead}
if num(v[6]) > 0 then upd[#upd + 1] = 'ff_n'; upd[#upd + 1] = 0 end
for k = 0, K - 1 do
  -- One addition per output per batch (each costs a decimal parse and
  -- print in Redis).
  redis.call('HINCRBYFLOAT', run, fld('sum', k), string.format('%.17g', sum[k]))
  if mn_s[k] then
    upd[#upd + 1] = fld('min', k); upd[#upd + 1] = mn_s[k]
    upd[#upd + 1] = fld('amin', k); upd[#upd + 1] = amin[k]
  end
  if mx_s[k] then
    upd[#upd + 1] = fld('max', k); upd[#upd + 1] = mx_s[k]
    upd[#upd + 1] = fld('amax', k); upd[#upd + 1] = amax[k]
  end
end
if state == 'QUEUED' then
  upd[#upd + 1] = 'state'; upd[#upd + 1] = 'RUNNING'
  upd[#upd + 1] = 'started_ms'; upd[#upd + 1] = ts
end
redis.call('HSET', run, unpack(upd))
-- Top-K: merge the counted chunks' candidates into each kept list (best
-- first, ties by lower index), keep T, and note the T-th value.
local th, changed = {}, false
for j = 0, 2 * K - 1 do
  if #thr >= 16 * K then th[j] = struct.unpack('<d', thr, 1 + 8 * j) else th[j] = 0 / 0 end
end
for j = 0, 2 * K - 1 do
  if #cand[j] > 0 then
    local list = {}
    local kept = redis.call('HGET', top, j) or ''
    table.insert(cand[j], kept)
    for _, s in ipairs(cand[j]) do
      local pos = 1
      while pos < #s do
        local x, idx
        x, idx, pos = struct.unpack('<dd', s, pos)
        list[#list + 1] = {x, idx}
      end
    end
    if j % 2 == 0 then
      table.sort(list, function(a, b) return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2]) end)
    else
      table.sort(list, function(a, b) return a[1] > b[1] or (a[1] == b[1] and a[2] < b[2]) end)
    end
    local out = {}
    for r = 1, math.min(T, #list) do out[r] = struct.pack('<dd', list[r][1], list[r][2]) end
    redis.call('HSET', top, j, table.concat(out))
    if #list >= T then th[j] = list[T][1]; changed = true end
  end
end
if changed then
  local out = {}
  for j = 0, 2 * K - 1 do out[j + 1] = struct.pack('<d', th[j]) end
  thr = table.concat(out)
  redis.call('HSET', top, 't', thr)
end
return {codes, finish_if_done(run, KEYS[4], ARGV[2], ts, KEYS[7], KEYS[8]), thr}
