-- claim_agent_id: take an agent id for the process whose Hello carried
-- the instance secret with digest ARGV[2].
-- KEYS (2): owner key of the id, agents zset.
-- ARGV (4): agent id, instance digest, now ms, owner ttl ms.
-- Returns 1 taken, 0 refused.
-- Invariant: while an id's lease is live, only the process that holds it
--   (the same instance secret) may open a session with it.
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[2] then
  local exp = redis.call('ZSCORE', KEYS[2], ARGV[1])
  if exp and tonumber(exp) > tonumber(ARGV[3]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[4])
return 1
