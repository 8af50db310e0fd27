-- reclaim: take back one delivery of an agent that died (or froze, or was swept).
-- KEYS (9): as fail.
-- ARGV (12): group, entry id, owner consumer, chunk index, task bytes,
--   attempt, max attempts, error, traceparent, ChunkReclaimed body,
--   ChunkFailed body (dead = true), run id.
-- Returns {code, state} as fail, or -2 when the entry is no longer pending
--   for the owner.
-- Invariant: only if the entry is still pending for that owner, so any
--   number of reclaimers can race and a chunk is reclaimed at most once.
local p = redis.call('XPENDING', KEYS[6], ARGV[1], ARGV[2], ARGV[2], 1, ARGV[3])
if #p == 0 then return {-2, ''} end
redis.call('XACK', KEYS[6], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[6], ARGV[2])
release(KEYS[1], 1)
redis.call('HINCRBY', KEYS[7], 'reclaimed', 1)
return fail_attempt(KEYS, ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11], ARGV[12])
