-- requeue_missing: put back chunks that are neither done nor dead, from the
-- run's own bitmaps, into its re-queue list (chunks at or past its `next`
-- are still the scheduler's to hand out). Used by the server's audit (a
-- run with nothing queued, no task entry and chunks unaccounted for: its
-- in-flight count is then 0, whatever it said) and by retry of a run
-- stopped by fail-fast (whose fresh chunks resume too, and are counted as
-- re-queued). Every call also puts a run with chunks to hand out back in
-- its scheduler zset if it was missing from it ('sched' mode does only
-- that).
-- KEYS (7): run hash, done bitmap, dead bitmap, tasks stream, events
--   stream, stats hash, expiring zset.
-- ARGV (3 + 2 per chunk): run id, mode ('audit', 'retry' or 'sched'), traceparent;
--   then per chunk: chunk index, its Task bytes.
-- Returns {requeued, state}: requeued -1 if the run is unknown, -2 if it is
--   not active (in 'retry' mode: and not a FAILED run with purged chunks).
-- Invariant: a chunk is queued only while its done and dead bits are both
--   clear, checked in this same atomic step, so no counted or dead-lettered
--   chunk is queued again here. A chunk that still has an entry (the
--   caller's scan raced a re-queue) is queued twice at worst: the first
--   result wins and the second is dropped as a duplicate, never counted.
--   In 'retry' mode a FAILED run with purged chunks reopens (RUNNING again,
--   purged back to 0, its retention stopped), so done + dead + purged =
--   total keeps holding whenever the run is terminal.
local run = KEYS[1]
local state = redis.call('HGET', run, 'state')
if not state then return {-1, ''} end
local n = 0
if ARGV[2] == 'retry' and state == 'FAILED' and num(redis.call('HGET', run, 'purged')) > 0 then
  local v = redis.call('HMGET', run, 'total', 'next')
  if v[2] then n = num(v[1]) - num(v[2]) end
  redis.call('HSET', run, 'state', 'RUNNING')
  redis.call('HDEL', run, 'finished_ms', 'expires_ms', 'purged', 'error', 'ff_line', 'ff_n')
  redis.call('ZREM', KEYS[7], ARGV[1])
  redis.call('HINCRBY', KEYS[6], 'active', 1)
  state = 'RUNNING'
end
if not active(state) then return {-2, state} end
if ARGV[2] == 'audit' and redis.call('HEXISTS', run, 'inflight') == 1 then
  redis.call('HSET', run, 'inflight', 0)
end
local ts = now_ms()
-- Chunks at or past `next` are still queued: the scheduler hands them out.
local next_fresh = tonumber(redis.call('HGET', run, 'next'))
for i = 4, #ARGV - 1, 2 do
  local chunk = ARGV[i]
  if (not next_fresh or tonumber(chunk) < next_fresh)
    and redis.call('GETBIT', KEYS[2], chunk) == 0 and redis.call('GETBIT', KEYS[3], chunk) == 0 then
    if not requeue(run, chunk, 1, ts, false) then
      redis.call('XADD', KEYS[4], '*', 't', ARGV[i + 1], 'a', 1, 'tp', ARGV[3])
    end
    n = n + 1
  end
end
-- Also heals a run whose place in the scheduler was lost.
reschedule(run)
if n > 0 then
  local field = 'requeued_by_retry'
  if ARGV[2] == 'audit' then field = 'requeued_by_audit' end
  redis.call('HINCRBY', KEYS[6], field, n)
  emit(run, KEYS[5], f_bytes(2, ARGV[1]) .. f_bytes(17, f_varint(1, n)), now_ms())
end
return {n, state}
