-- claim_reap: take the job of reaping an expired agent, for one caller only.
-- KEYS (1): agents zset (agent id -> lease expiry ms).
-- ARGV (3): agent id, now ms, hold ms.
-- Returns 1 if this caller reaps it (its lease is pushed `hold` ahead so
--   others skip it; if this reaper dies, another takes over after that),
--   0 if the agent is alive or another reaper has it.
-- Invariant: at most one reaper per agent at a time.
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not s or tonumber(s) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], tonumber(ARGV[2]) + tonumber(ARGV[3]), ARGV[1])
return 1
