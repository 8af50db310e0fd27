-- retry: re-queue up to ARGV[2] of a run's dead letters with attempt 1, at
--   the back of the run's re-queue list (still before its fresh chunks).
-- KEYS (7): run hash, dead bitmap, dead-letter stream, events stream, tasks
--   stream, stats hash, expiring zset.
-- ARGV (2): run id, batch size.
-- Returns {requeued, state, letters read}; requeued -1 run unknown, -2 run
--   CANCELLED or SUCCEEDED.
-- Invariant: a letter is re-queued only while its chunk's dead bit is set,
--   and the bit is cleared in the same step, so a chunk is re-queued once;
--   a FAILED run becomes RUNNING again and its retention stops.
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {-1, '', 0} end
if state == 'CANCELLED' or state == 'SUCCEEDED' then return {-2, state, 0} end
local entries = redis.call('XRANGE', KEYS[3], '-', '+', 'COUNT', ARGV[2])
local n = 0
local ts = now_ms()
for _, e in ipairs(entries) do
  local f = {}
  for i = 1, #e[2], 2 do f[e[2][i]] = e[2][i + 1] end
  if f['c'] and f['t'] and redis.call('GETBIT', KEYS[2], f['c']) == 1 then
    redis.call('SETBIT', KEYS[2], f['c'], 0)
    redis.call('HINCRBY', KEYS[1], 'dead', -1)
    if not requeue(KEYS[1], f['c'], 1, ts, false) then
      redis.call('XADD', KEYS[5], '*', 't', f['t'], 'a', 1, 'tp', f['tp'] or '')
    end
    n = n + 1
  end
  redis.call('XDEL', KEYS[3], e[1])
end
if n > 0 then
  if state == 'FAILED' then
    redis.call('HSET', KEYS[1], 'state', 'RUNNING')
    redis.call('HDEL', KEYS[1], 'finished_ms', 'expires_ms', 'purged', 'error', 'ff_line', 'ff_n')
    redis.call('ZREM', KEYS[7], ARGV[1])
    redis.call('HINCRBY', KEYS[6], 'active', 1)
    state = 'RUNNING'
  end
  reschedule(KEYS[1])
  emit(KEYS[1], KEYS[4], f_bytes(2, ARGV[1]) .. f_bytes(17, f_varint(1, n)), ts)
end
return {n, state, #entries}
