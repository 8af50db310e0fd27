-- fail: record a failed attempt (a kernel error) of a delivery the caller holds.
-- KEYS (9): run hash, done bitmap, dead bitmap, dead-letter stream, events
--   stream, tasks stream, stats hash, expiring zset, results hash.
-- ARGV (13): group, entry id, chunk index, task bytes, attempt, max
--   attempts, error, traceparent, ChunkFailed body (dead = false),
--   ChunkFailed body (dead = true), run id, consumer, error's first line.
-- Returns {code, state}: 1 re-queued, 3 dead-lettered, 4 run stopped by
--   fail-fast, 0 chunk already done, 2 run not active, -1 run unknown,
--   -2 not pending for the caller.
-- Invariant: the delivery leaves the stream in the same step that re-queues
--   or dead-letters its chunk, so the chunk is never without an entry, a
--   result or a dead letter while its run is active.
if #redis.call('XPENDING', KEYS[6], ARGV[1], ARGV[2], ARGV[2], 1, ARGV[12]) == 0 then
  return {-2, ''}
end
redis.call('XACK', KEYS[6], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[6], ARGV[2])
release(KEYS[1], 1)
local r = fail_attempt(KEYS, ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11])
if r[1] ~= 1 and r[1] ~= 3 then return r end
local v = redis.call('HMGET', KEYS[1], 'fail_fast', 'ff_line', 'ff_n', 'state')
local limit = num(v[1])
if limit <= 0 then return r end
local streak = 1
if v[2] == ARGV[13] then streak = num(v[3]) + 1 end
redis.call('HSET', KEYS[1], 'ff_line', ARGV[13], 'ff_n', streak)
if streak < limit or not active(v[4]) then return r end
stop_failed(KEYS[1], KEYS[5], ARGV[11], now_ms(), KEYS[7], KEYS[8],
  'stopped by fail-fast: ' .. streak .. ' attempts in a row failed with: ' .. ARGV[13])
return {4, 'FAILED'}
