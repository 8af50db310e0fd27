-- complete: complete a batch of chunks of one run, atomically.
-- KEYS (8): run hash, done bitmap, results hash, events stream, tasks
--   stream, dead bitmap, stats hash, expiring zset.
-- ARGV (3 + 8 per chunk): group, run id, consumer; then per chunk: entry
--   id, chunk index, value count, sum, min, max, packed values,
--   ChunkCompleted event body.
-- Returns {codes, state}: per chunk 1 counted, 0 duplicate, 2 run not
--   active, -1 run unknown, -3 not held by the caller; the run's state after.
-- Invariant: first result wins — a chunk's values are stored and counted
--   at most once (its done bit), and only for a delivery still pending for
--   the caller; result, ack, counters and events never disagree.
local run = KEYS[1]
local n = (#ARGV - 3) / 8
local ids, held, codes = {}, {}, {}
for i = 0, n - 1 do
  local id = ARGV[4 + i * 8]
  codes[i + 1] = -3
  if #redis.call('XPENDING', KEYS[5], ARGV[1], id, id, 1, ARGV[3]) > 0 then
    held[i] = true
    ids[#ids + 1] = id
  elseif redis.call('GETBIT', KEYS[2], ARGV[5 + i * 8]) == 1 then
    -- Already counted (e.g. this very call, retried after its reply was
    -- lost): a duplicate, and nothing to change.
    codes[i + 1] = 0
  end
end
if #ids == 0 then return {codes, ''} end
redis.call('XACK', KEYS[5], ARGV[1], unpack(ids))
redis.call('XDEL', KEYS[5], unpack(ids))
local v = redis.call('HMGET', run, 'state', 'total', 'done', 'dead', 'count', 'min', 'max', 'ff_n')
local state = v[1]
if not state or not active(state) then
  local code = 2
  if not state then code = -1; state = '' end
  for i = 0, n - 1 do if held[i] then codes[i + 1] = code end end
  return {codes, state}
end
local total, done, dead, count = num(v[2]), num(v[3]), num(v[4]), num(v[5])
local mn, mx = tonumber(v[6]), tonumber(v[7])
local mn_s, mx_s = nil, nil
local ts = now_ms()
local ts_f = f_varint(3, ts)
local fields = {}
local counted, dups, sum = 0, 0, 0
for i = 0, n - 1 do
  local b = 4 + i * 8
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
    fields[#fields + 1] = ARGV[b + 6]
    done = done + 1
    count = count + tonumber(ARGV[b + 2])
    sum = sum + tonumber(ARGV[b + 3])
    local lo, hi = tonumber(ARGV[b + 4]), tonumber(ARGV[b + 5])
    if not mn or lo < mn then mn = lo; mn_s = ARGV[b + 4] end
    if not mx or hi > mx then mx = hi; mx_s = ARGV[b + 5] end
    redis.call('XADD', KEYS[4], '*', 'e', ARGV[b + 7] .. ts_f .. progress_of(total, done, dead, count))
  end
end
if dups > 0 then redis.call('HINCRBY', KEYS[7], 'duplicates', dups) end
if counted == 0 then return {codes, state} end
redis.call('HSET', KEYS[3], unpack(fields))
redis.call('HINCRBY', KEYS[7], 'completed', counted)
-- One addition per batch (each costs a decimal parse and print in Redis).
redis.call('HINCRBYFLOAT', run, 'sum', string.format('%.17g', sum))
local upd = {'done', done, 'count', count, 'dead', dead}
if num(v[8]) > 0 then upd[#upd + 1] = 'ff_n'; upd[#upd + 1] = 0 end
if mn_s then upd[#upd + 1] = 'min'; upd[#upd + 1] = mn_s end
if mx_s then upd[#upd + 1] = 'max'; upd[#upd + 1] = mx_s end
if state == 'QUEUED' then
  upd[#upd + 1] = 'state'; upd[#upd + 1] = 'RUNNING'
  upd[#upd + 1] = 'started_ms'; upd[#upd + 1] = ts
end
redis.call('HSET', run, unpack(upd))
return {codes, finish_if_done(run, KEYS[4], ARGV[2], ts, KEYS[7], KEYS[8])}
