-- claim: choose up to n chunks for an agent, fairly, and deliver them to it.
-- KEYS (1 + 5 per kernel): the scheduler's tick counter; then for each
--   kernel the agent offers: its tasks stream, its wake stream, and its
--   sched zsets for the classes high, normal and low.
-- ARGV (4): group, consumer (the agent id), n (1 ..= 1000), key prefix.
-- Returns {entries, wake ids}: entries in XREADGROUP's reply shape (per
--   tasks stream, the entries delivered to the consumer, pending for it);
--   when none was delivered, wake ids holds each wake stream's last id
--   ('0-0' if it has none), for the caller to block on with XREAD: work
--   queued after this call rings a wake stream, so none is missed.
-- Choice: the highest class with a claimable run, except that every 20th
--   chunk handed out (the scheduler's tick) goes to the lowest class with
--   one; within a class, the run with the fewest chunks in flight per unit
--   of weight, ties to the one served longest ago. A run takes its
--   re-queued chunks first (reclaimed ones at the front), then fresh ones.
-- Invariant: a chunk leaves its run's queue (`next`, the re-queue list) in
--   the same step that appends its task entry and delivers it, and the
--   run's in-flight count rises by exactly the deliveries made, so every
--   chunk of an active run is always queued, pending, done or dead, and a
--   run never holds more than its max_in_flight.
local group, consumer, want, prefix = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local nk = (#KEYS - 1) / 5
local AGING = 20
local function zkey(i, c) return KEYS[1 + (i - 1) * 5 + 2 + c] end
local tops = {}
local function load_top(i, c)
  local r = redis.call('ZRANGE', zkey(i, c), 0, 1, 'WITHSCORES')
  if #r == 0 then
    tops[(i - 1) * 3 + c] = false
  else
    tops[(i - 1) * 3 + c] = {id = r[1], score = tonumber(r[2]), more = #r > 2}
  end
end
local function claimable(i, c)
  local t = tops[(i - 1) * 3 + c]
  if t and t.score < CAPPED then return t end
  return nil
end
for i = 1, nk do for c = 1, 3 do load_top(i, c) end end
local tick = num(redis.call('GET', KEYS[1]))
local ts = now_ms()
local added, given = {}, 0
for i = 1, nk do added[i] = 0 end
local rounds = 0
while given < want and rounds < want + 16 do
  rounds = rounds + 1
  local pos = (tick + given) % AGING
  local order = {1, 2, 3}
  if pos == AGING - 1 then order = {3, 2, 1} end
  local best, bi, bc
  for _, c in ipairs(order) do
    for i = 1, nk do
      local t = claimable(i, c)
      if t and (not best or t.score < best.score) then best, bi, bc = t, i, c end
    end
    if best then break end
  end
  if not best then break end
  -- One chunk per turn while another run of the class competes; else as
  -- many as wanted, up to the next tick at which a lower class with work
  -- would be served first.
  local m = 1
  local alone = not best.more
  local other_class = false
  for i = 1, nk do
    for c = 1, 3 do
      if claimable(i, c) and not (i == bi and c == bc) then
        if c == bc then alone = false else other_class = true end
      end
    end
  end
  if alone and pos ~= AGING - 1 then
    m = want - given
    if other_class then m = math.min(m, AGING - 1 - pos) end
  end
  local run = prefix .. 'run:' .. best.id
  local v = redis.call('HMGET', run, 'state', 'next', 'total', 'qn', 'inflight', 'cap',
    'weight', 'task', 'tp', 'created_ms', 'params', 'csize', 'wait_max')
  local key = zkey(bi, bc)
  if not v[8] or not active(v[1]) then
    redis.call('ZREM', key, best.id)
  else
    local nxt, total, qn, infl, cap = num(v[2]), num(v[3]), num(v[4]), num(v[5]), num(v[6])
    local params, csize, created = num(v[11]), num(v[12]), num(v[10])
    if cap > 0 then m = math.min(m, cap - infl) end
    local got = {}
    local popped = 0
    if qn > 0 and m > 0 then
      local q = redis.call('LPOP', run .. ':queue', math.min(m, qn))
      if q then
        for _, e in ipairs(q) do
          popped = popped + 1
          local c, a, at = string.match(e, '^(%d+):(%d+):(%d+)$')
          if c then got[#got + 1] = {tonumber(c), a, tonumber(at)} end
        end
      end
    end
    while #got < m and nxt < total do
      got[#got + 1] = {nxt, '1', created}
      nxt = nxt + 1
    end
    local tasks = KEYS[1 + (bi - 1) * 5 + 1]
    local wsum, wmax = 0, num(v[13])
    for _, g in ipairs(got) do
      local start = g[1] * csize
      local stop = start + csize
      if stop > params then stop = params end
      local t = v[8] .. f_varint(2, g[1]) .. f_varint(3, start) .. f_varint(4, stop)
      redis.call('XADD', tasks, '*', 't', t, 'a', g[2], 'tp', v[9] or '', 'q', g[3])
      local w = ts - g[3]
      if w < 0 then w = 0 end
      wsum = wsum + w
      if w > wmax then wmax = w end
    end
    infl = infl + #got
    qn = qn - popped
    if qn < 0 then qn = 0 end
    local seq = tick + given
    redis.call('HSET', run, 'next', nxt, 'qn', qn, 'inflight', infl, 'seq', seq % SEQ, 'wait_max', wmax)
    if #got > 0 then
      redis.call('HINCRBY', run, 'claims', #got)
      redis.call('HINCRBY', run, 'wait_sum', wsum)
    end
    if total - nxt + qn <= 0 then
      redis.call('ZREM', key, best.id)
    else
      redis.call('ZADD', key, sched_score(infl, cap, num(v[7]), seq), best.id)
    end
    added[bi] = added[bi] + #got
    given = given + #got
  end
  load_top(bi, bc)
end
if given > 0 then redis.call('INCRBY', KEYS[1], given) end
local out = {}
for i = 1, nk do
  -- Entries appended before the scheduler (an upgrade) are delivered too,
  -- oldest first; an idle claim looks for them.
  local count = added[i]
  if given == 0 then count = want end
  if count > 0 then
    local r = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', count,
      'STREAMS', KEYS[1 + (i - 1) * 5 + 1], '>')
    if r then for _, s in ipairs(r) do out[#out + 1] = s end end
  end
end
local wakes = {}
if #out == 0 then
  for i = 1, nk do
    local w = redis.call('XREVRANGE', KEYS[1 + (i - 1) * 5 + 2], '+', '-', 'COUNT', 1)
    if w[1] then wakes[i] = w[1][1] else wakes[i] = '0-0' end
  end
end
return {out, wakes}
