-- del_consumer: remove a consumer from the group, only if it holds nothing.
-- KEYS (1): tasks stream.
-- ARGV (2): group, consumer.
-- Returns 1 removed, 0 not (it still holds entries).
-- Invariant: XGROUP DELCONSUMER would drop its pending entries, i.e. lose
--   chunks; it is never called while there are any.
local p = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #p > 0 then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
