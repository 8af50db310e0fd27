-- claim_gate: decide, against Redis, whether a task entry an agent just
-- claimed is still work.
-- KEYS (3): run hash, events stream, tasks stream.
-- ARGV (4): group, entry id, consumer (the agent id), RunStarted event body.
-- Returns {code, state}: 1 the run is unknown or no longer QUEUED/RUNNING
--   and the entry was acked and deleted (state '' when unknown); 0 the run
--   is active, compute the chunk (a QUEUED run becomes RUNNING, with its
--   RunStarted event); -2 the entry is not pending for this consumer
--   (reclaimed from it): nothing changed.
-- Invariant: an entry is only ever destroyed here in the same atomic step
--   that read its run's state, never on an agent's cached belief. Dropping
--   an entry of an ended run loses nothing: every chunk of an ended run is
--   done, dead-lettered (retry re-queues it from the dead letters) or
--   counted as purged (cancel, fail-fast; retry of a fail-fast run
--   re-queues it from the run's bitmaps).
if #redis.call('XPENDING', KEYS[3], ARGV[1], ARGV[2], ARGV[2], 1, ARGV[3]) == 0 then
  return {-2, ''}
end
local state = redis.call('HGET', KEYS[1], 'state')
if not state or not active(state) then
  redis.call('XACK', KEYS[3], ARGV[1], ARGV[2])
  redis.call('XDEL', KEYS[3], ARGV[2])
  release(KEYS[1], 1)
  return {1, state or ''}
end
if state == 'QUEUED' then
  local ts = now_ms()
  redis.call('HSET', KEYS[1], 'state', 'RUNNING', 'started_ms', ts)
  emit(KEYS[1], KEYS[2], ARGV[4], ts)
  state = 'RUNNING'
end
return {0, state}
