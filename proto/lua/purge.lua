-- purge: remove a finished run's data at once, leaving a tombstone.
-- KEYS (11): run hash, done bitmap, dead bitmap, dead-letter stream, results
--   hash, events stream, extremes string, runs zset, expiring zset, gone
--   zset, the run's re-queue list.
-- ARGV (5): run id, why ('expired': only once due; 'deleted': now), now ms,
--   tombstone age ms, tombstone count.
-- Returns {code, state}: 1 removed, 0 not due yet, -2 run still active,
--   -1 no such run (its index entries are cleaned up anyway).
-- Invariant: no reader ever sees half a run, and an active run is never
--   removed.
local state = redis.call('HGET', KEYS[1], 'state')
if not state then
  redis.call('ZREM', KEYS[8], ARGV[1])
  redis.call('ZREM', KEYS[9], ARGV[1])
  return {-1, ''}
end
if active(state) then return {-2, state} end
if ARGV[2] == 'expired' then
  local at = num(redis.call('HGET', KEYS[1], 'expires_ms'))
  if at <= 0 or at > tonumber(ARGV[3]) then return {0, state} end
end
local sched = redis.call('HGET', KEYS[1], 'sched')
if sched then redis.call('ZREM', sched, ARGV[1]) end
redis.call('UNLINK', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[11])
redis.call('ZREM', KEYS[8], ARGV[1])
redis.call('ZREM', KEYS[9], ARGV[1])
redis.call('ZADD', KEYS[10], ARGV[3], ARGV[1] .. ':' .. ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[10], '-inf', tonumber(ARGV[3]) - tonumber(ARGV[4]))
local n = redis.call('ZCARD', KEYS[10])
if n > tonumber(ARGV[5]) then redis.call('ZREMRANGEBYRANK', KEYS[10], 0, n - tonumber(ARGV[5]) - 1) end
return {1, state}
