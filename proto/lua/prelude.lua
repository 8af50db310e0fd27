-- prelude: shared by every script (run before each body, in one EVAL).
-- Protobuf field encoders, the clock, event emission, the end-of-run check
-- and the failed-attempt step. Redis's Lua 5.1 numbers are doubles, exact
-- for the integers used here (< 2^53).
-- KEYS (0), ARGV (0): none of its own.
-- Invariant: a run ends (SUCCEEDED or FAILED) exactly once, in the same
-- step that makes done + dead reach total, or in stop_failed (fail-fast).
local char, floor = string.char, math.floor
-- Unrolled for the sizes the hot path sees: each string.char call and table
-- costs the completion script more than the rest of its Lua together.
local function varint(n)
  n = floor(n)
  if n < 128 then return char(n) end
  if n < 16384 then return char(n % 128 + 128, floor(n / 128)) end
  if n < 2097152 then
    return char(n % 128 + 128, floor(n / 128) % 128 + 128, floor(n / 16384))
  end
  local out, i = {}, 0
  while n >= 128 do
    i = i + 1
    out[i] = n % 128 + 128
    n = floor(n / 128)
  end
  out[i + 1] = n
  return char(unpack(out))
end
local function f_varint(field, n) return varint(field * 8) .. varint(n) end
local function f_bytes(field, s) return varint(field * 8 + 2) .. varint(#s) .. s end
local function f_double(field, x) return varint(field * 8 + 1) .. struct.pack('<d', x) end
local function num(v) return tonumber(v) or 0 end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- The event's `progress` field (4) from the run's counters.
-- Tags written out (fields 1-4 varint: 8, 16, 24, 32; field 4 bytes: 34);
-- the message is under 128 bytes, so its length is one byte.
local function progress_of(total, done, dead, count)
  local m = '\8' .. varint(total) .. '\16' .. varint(done) .. '\24' .. varint(dead) .. '\32' .. varint(count)
  return '\34' .. char(#m) .. m
end
local function progress(run)
  local v = redis.call('HMGET', run, 'total', 'done', 'dead', 'count')
  return progress_of(num(v[1]), num(v[2]), num(v[3]), num(v[4]))
end
local function emit(run, events, body, ts)
  redis.call('XADD', events, '*', 'e', body .. f_varint(3, ts) .. progress(run))
end
-- Append the events `evs` (whole Event messages, each length-delimited,
-- in order) as one entry of the events stream: one XADD for a batch
-- rather than one per event. Its field 'b' holds them; its id is the last
-- event's, and the events before it take the sequence numbers just below,
-- in one ms above the stream's last entry, so every event keeps an id of
-- its own (records.rs, decode_events). Nothing deletes single entries of
-- an events stream, so its last entry's id is its top; were it not, the
-- events go in one entry each rather than the call fail.
local function emit_batch(events, evs, ts)
  local n = #evs
  if n == 0 then return end
  if n == 1 then
    redis.call('XADD', events, '*', 'b', evs[1])
    return
  end
  local ms, seq = ts, 0
  local last = redis.call('XREVRANGE', events, '+', '-', 'COUNT', 1)[1]
  if last then
    local lm, ls = string.match(last[1], '^(%d+)-(%d+)$')
    lm, ls = tonumber(lm), tonumber(ls)
    if lm and lm >= ms then ms, seq = lm, ls + 1 end
  end
  local r = redis.pcall('XADD', events, string.format('%.0f-%.0f', ms, seq + n - 1), 'b', table.concat(evs))
  if type(r) == 'table' and r.err then
    for i = 1, n do redis.call('XADD', events, '*', 'b', evs[i]) end
  end
end
local function aggregate(run)
  local v = redis.call('HMGET', run, 'count', 'sum', 'min', 'max')
  local c, s = num(v[1]), num(v[2])
  local mean = 0
  if c > 0 then mean = s / c end
  return f_varint(1, c) .. f_double(2, s) .. f_double(3, num(v[3])) .. f_double(4, num(v[4])) .. f_double(5, mean)
end
local function active(state) return state == 'QUEUED' or state == 'RUNNING' end
-- The scheduler (docs/scheduling.md). A run with chunks to hand out is a
-- member of its kernel's sched zset, scored by its class (high 0, normal
-- 1, low 2; CLASS apart), then by its virtual agent time (vtime, in whole
-- ms), then by its chunks in flight (equal vtimes: the run holding
-- fewer slots goes first; then run id order: oldest). vtime is the agent
-- time the run has used per unit of weight, in ms: vbase + (served +
-- inflight x mean) / weight, where served is the compute time of its
-- completed deliveries (as their agents measured it, each bounded by how
-- long the delivery was held), mean is served per charged delivery (the
-- in-flight chunks' expected cost, 0 until one is charged) and vbase is
-- the catch-up floor: a run found more than CATCH_UP behind the
-- least-served other run of its class (new, retried, or back from its
-- cap) is lifted to that distance (claim.lua), so it gets the free slots
-- first but for a bounded time. A run at its max_in_flight scores CAPOFF
-- into its class, after every run of the class that is not, and is
-- skipped. Run hash fields: next (its next fresh chunk), qn (chunks
-- re-queued in run:<id>:queue, handed out first), inflight (deliveries in
-- the tasks stream), cap, weight, class, served (µs), nserved, vbase
-- (ms), sched (its zset's key), wake (its kernel's wake stream, rung when
-- it becomes claimable).
-- These helpers touch keys named by the run hash (its queue list, zset and
-- wake stream) beside a script's declared KEYS: they share the run's slot
-- (its slot group's hash tag, keys.rs).
local CLASS = 2 ^ 46
local CAPOFF = 2 ^ 45
local TIE = 2 ^ 6 -- in-flight counts beyond break no ties (ties are fresh runs')
local LEVELS = 2 ^ 39 -- vtime levels, in ms: 17 years of agent time at weight 1; beyond, runs tie on vtime
local CATCH_UP = 60000 -- ms of vtime (a minute of one agent's time at weight 1)
local function vtime(inflight, weight, served, nserved, vbase)
  if weight < 1 then weight = 1 end
  local mean = 0
  if nserved > 0 then mean = served / nserved end
  return vbase + (served + inflight * mean) / 1000 / weight
end
local function level_of(vt)
  local level = floor(vt)
  if level >= LEVELS then return LEVELS - 1 end
  if level < 0 then return 0 end
  return level
end
local function sched_score(class, inflight, cap, vt)
  local base = class * CLASS
  if cap > 0 and inflight >= cap then return base + CAPOFF end
  local t = inflight
  if t >= TIE then t = TIE - 1 end
  return base + level_of(vt) * TIE + t
end
local function capped(score) return score % CLASS >= CAPOFF end
-- The vtime level a score holds (nil for a capped run's).
local function level_in(score)
  local r = score % CLASS
  if r >= CAPOFF then return nil end
  return floor(r / TIE)
end
-- Exact integer text of a score (Lua would print 14 digits).
local function fmt(x) return string.format('%.0f', x) end
local function run_id_of(run) return string.match(run, 'run:([%w%-]+)$') end
-- A run's scheduler fields (see above), and whether it has chunks to hand
-- out while active.
local function sched_view(run)
  return redis.call('HMGET', run, 'sched', 'wake', 'state', 'next', 'total', 'qn',
    'inflight', 'cap', 'weight', 'class', 'served', 'nserved', 'vbase')
end
local function has_work(v) return active(v[3]) and num(v[5]) - num(v[4]) + num(v[6]) > 0 end
local function score_of(v, inflight, served, nserved)
  return sched_score(num(v[10]), inflight, num(v[8]),
    vtime(inflight, num(v[9]), served or num(v[11]), nserved or num(v[12]), num(v[13])))
end
local function ring(v, run) redis.call('XADD', v[2], 'MAXLEN', '~', 64, '*', 'r', run_id_of(run)) end
-- Put a run in its zset with its current score, or take it out, as its
-- state and queue say; ring the wake stream when it becomes claimable.
local function reschedule(run)
  local v = sched_view(run)
  if not v[1] then return end
  local id = run_id_of(run)
  if not has_work(v) then
    redis.call('ZREM', v[1], id)
    return
  end
  local old = redis.call('ZSCORE', v[1], id)
  local s = score_of(v, num(v[7]))
  if old and tonumber(old) == s then return end
  redis.call('ZADD', v[1], fmt(s), id)
  if not capped(s) and (not old or capped(tonumber(old))) then ring(v, run) end
end
-- `n` deliveries of the run left the tasks stream's pending list: one
-- read, one write and (if it still has chunks to hand out) its new score;
-- the wake stream is rung if that took it back under its cap. `used`:
-- the agent-µs the deliveries took (nil: none charged, e.g. reclaimed
-- from a dead agent; they still count as in flight no more).
local function release(run, n, used)
  if n <= 0 then return end
  local v = sched_view(run)
  if not v[7] then return end
  local old = num(v[7])
  local left = old - n
  if left < 0 then left = 0 end
  local served, nserved = num(v[11]), num(v[12])
  if used then
    served, nserved = served + used, nserved + n
    redis.call('HSET', run, 'inflight', left, 'served', fmt(served), 'nserved', nserved)
  else
    redis.call('HSET', run, 'inflight', left)
  end
  if not v[1] or not has_work(v) then return end
  redis.call('ZADD', v[1], fmt(score_of(v, left, served, nserved)), run_id_of(run))
  local cap = num(v[8])
  if cap > 0 and old >= cap and left < cap then ring(v, run) end
end
-- Queue a chunk again (attempt `attempt`), at the front of its run's queue
-- (a reclaimed or failed chunk) or at its back (a retried dead letter).
-- False for a run queued before the scheduler (no task template): the
-- caller then appends to the tasks stream as before.
local function requeue(run, chunk, attempt, ts, front)
  if redis.call('HEXISTS', run, 'task') == 0 then return false end
  local e = chunk .. ':' .. attempt .. ':' .. ts
  if front then redis.call('LPUSH', run .. ':queue', e) else redis.call('RPUSH', run .. ':queue', e) end
  redis.call('HINCRBY', run, 'qn', 1)
  return true
end
-- A run that just ended starts its retention: it expires at ts + its
-- retention_ms, when the server's janitor removes all of its keys at once.
local function start_retention(run, expiring, run_id, ts)
  local keep = num(redis.call('HGET', run, 'retention_ms'))
  if keep <= 0 then return end
  redis.call('HSET', run, 'expires_ms', ts + keep)
  redis.call('ZADD', expiring, ts + keep, run_id)
end
-- Ends the run once every chunk is done or dead; returns the state after.
-- `stats` counts active runs installation-wide (for --max-runs-in-flight).
local function finish_if_done(run, events, run_id, ts, stats, expiring)
  local v = redis.call('HMGET', run, 'total', 'done', 'dead', 'state')
  local state = v[4]
  if not active(state) then return state end
  if num(v[2]) + num(v[3]) < num(v[1]) then return state end
  local code = 3
  state = 'SUCCEEDED'
  if num(v[3]) > 0 then state = 'FAILED'; code = 4 end
  redis.call('HSET', run, 'state', state, 'finished_ms', ts)
  reschedule(run)
  redis.call('HINCRBY', stats, 'active', -1)
  start_retention(run, expiring, run_id, ts)
  emit(run, events, f_bytes(2, run_id) .. f_bytes(13, f_varint(1, code) .. f_bytes(2, aggregate(run))), ts)
  return state
end
-- End an active run as FAILED before every chunk is done or dead (fail-fast).
-- The chunks neither done nor dead are counted as purged, so the books
-- balance (done + dead + purged = total); retry re-queues them from the
-- run's bitmaps. `why` is valid UTF-8 of bounded length (the caller's).
local function stop_failed(run, events, run_id, ts, stats, expiring, why)
  local v = redis.call('HMGET', run, 'total', 'done', 'dead')
  redis.call('HSET', run, 'state', 'FAILED', 'finished_ms', ts, 'error', why,
    'purged', num(v[1]) - num(v[2]) - num(v[3]))
  reschedule(run)
  redis.call('HINCRBY', stats, 'active', -1)
  start_retention(run, expiring, run_id, ts)
  emit(run, events, f_bytes(2, run_id) .. f_bytes(13, f_varint(1, 4) .. f_bytes(2, aggregate(run)) .. f_bytes(3, why)), ts)
end
-- One failed attempt at a chunk (kernel error, or its agent died): re-queue
-- it with attempt + 1 at the front of its run's queue, or at max attempts dead-letter it, count it dead
-- and end the run if it was the last chunk. The caller has already acked and
-- deleted and released the delivery. K: run, done, deadbits, dead stream, events, tasks,
-- stats, expiring, results.
-- Returns {code, state}: 1 re-queued, 3 dead-lettered, 0 chunk already has a
-- result, 2 run not active, -1 run unknown.
local function fail_attempt(K, chunk, task, attempt, max, err, tp, body_retry, body_dead, run_id)
  local run = K[1]
  -- The delivery ends here without a result: values its completion MULTI
  -- wrote while that MULTI's script never ran (NOSCRIPT) go with it, so no
  -- later delivery of the chunk is counted with them.
  if redis.call('GETBIT', K[2], chunk) == 0 then redis.call('HDEL', K[9], chunk) end
  local state = redis.call('HGET', run, 'state')
  if not state then return {-1, ''} end
  if not active(state) then return {2, state} end
  if redis.call('GETBIT', K[2], chunk) == 1 then return {0, state} end
  local ts = now_ms()
  redis.call('HINCRBY', K[7], 'failed', 1)
  if tonumber(attempt) < tonumber(max) then
    if requeue(run, chunk, tonumber(attempt) + 1, ts, true) then
      reschedule(run)
    else
      redis.call('XADD', K[6], '*', 't', task, 'a', tonumber(attempt) + 1, 'tp', tp)
    end
    emit(run, K[5], body_retry, ts)
    return {1, state}
  end
  if redis.call('GETBIT', K[3], chunk) == 0 then
    redis.call('SETBIT', K[3], chunk, 1)
    redis.call('HINCRBY', run, 'dead', 1)
    redis.call('HINCRBY', K[7], 'dead', 1)
    redis.call('XADD', K[4], '*', 'c', chunk, 'a', attempt, 'err', err, 't', task, 'tp', tp)
  end
  emit(run, K[5], body_dead, ts)
  return {3, finish_if_done(run, K[5], run_id, ts, K[7], K[8])}
end
