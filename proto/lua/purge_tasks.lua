-- purge_tasks: delete entries of a cancelled run that no agent was delivered.
-- KEYS (1): tasks stream.
-- ARGV (1 + 1 per entry): group, then entry ids.
-- Returns the number deleted.
-- Invariant: a pending entry is left to its holder, which acks and deletes it.
local n = 0
for i = 2, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #p == 0 then n = n + redis.call('XDEL', KEYS[1], ARGV[i]) end
end
return n
