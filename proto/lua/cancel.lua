-- cancel: cancel a run if it is still active; its retention starts.
-- KEYS (4): run hash, events stream, stats hash, expiring zset.
-- ARGV (3): RunCancelled event body, run id, the run's message (with the
--   reason: what Status shows).
-- Returns {changed, state}: changed 1 if this call cancelled it; state ''
--   if the run is unknown.
-- Invariant: once CANCELLED nothing is counted, so done + dead + purged =
--   total holds with purged written here.
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {0, ''} end
if not active(state) then return {0, state} end
local ts = now_ms()
-- A first write that adds no data: Redis refuses a script at its first
-- write that adds data when maxmemory is reached, and only then, so this
-- lets a user cancel (and then delete) runs to free a full Redis.
redis.call('HDEL', KEYS[1], 'expires_ms')
local c = redis.call('HMGET', KEYS[1], 'total', 'done', 'dead')
-- No chunk is counted after this (completions of an ended run store
-- nothing), so the books balance: done + dead + purged = total.
redis.call('HSET', KEYS[1], 'state', 'CANCELLED', 'finished_ms', ts,
  'purged', num(c[1]) - num(c[2]) - num(c[3]), 'error', ARGV[3])
redis.call('DEL', KEYS[1] .. ':queue')
redis.call('HSET', KEYS[1], 'qn', 0)
reschedule(KEYS[1])
redis.call('HINCRBY', KEYS[3], 'active', -1)
start_retention(KEYS[1], KEYS[4], ARGV[2], ts)
emit(KEYS[1], KEYS[2], ARGV[1], ts)
return {1, 'CANCELLED'}
