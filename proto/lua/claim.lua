-- claim: choose up to n chunks for an agent, fairly, and append their
-- task entries; the caller's XREADGROUP in the same MULTI (see
-- ttg_proto::sched::claim) delivers them to it, so they are pending for
-- that agent when the MULTI ends.
-- KEYS (1 + 3 per kernel): the scheduler's tick counter; then for each
--   kernel the agent offers: its wake stream, its sched zset and its
--   tasks stream.
-- ARGV (2): n (1 ..= 1000), key prefix.
-- Returns {handed out per kernel, wake ids}: wake ids, when nothing was
--   handed out, holds each wake stream's last id ('0-0' if it has none),
--   for the caller to block on with XREAD: work queued after this call
--   rings a wake stream, so none is missed.
-- Choice: the highest class with a claimable run, except that every 20th
--   chunk handed out (the scheduler's tick) goes to the lowest class with
--   one; within a class, the run with the least virtual agent time (see
--   prelude.lua), ties to the one with fewer chunks in flight. A run
--   served while more than CATCH_UP behind the least-served other
--   claimable run of its class is first lifted to that distance. A
--   turn is max(1, n / 2) chunks while another run of the class competes
--   (one for an agent claiming one to three free slots), else up to the
--   next aging tick's worth. The zset's first claimable runs are read
--   (a few, more only if the call runs out of them; capped runs skipped
--   a class at a time) and walked locally: a run served is put back at
--   its new score. A run
--   takes its re-queued chunks first (reclaimed ones at the front), then
--   fresh ones.
-- Invariant: a chunk leaves its run's queue (`next`, the re-queue list) in
--   the same step that appends its task entry, and the run's in-flight
--   count rises by exactly the entries appended, so every chunk of an
--   active run is always queued, in the tasks stream, done or dead, and a
--   run never holds more than its max_in_flight.
local want, prefix = tonumber(ARGV[1]), ARGV[2]
local nk = (#KEYS - 1) / 3
local AGING = 20
local function wkey(i) return KEYS[2 + (i - 1) * 3] end
local function zkey(i) return KEYS[3 + (i - 1) * 3] end
local function tkey(i) return KEYS[4 + (i - 1) * 3] end
local function class_of(score) return floor(score / CLASS) end
-- The score range of class c's claimable runs, as ZRANGEBYSCORE and ZCOUNT
-- take it (a capped run sorts after the claimable runs of its class).
local function claimable(c) return fmt(c * CLASS), '(' .. fmt(c * CLASS + CAPOFF) end
-- Kernel i's aging candidate: the best claimable run of its lowest class
-- with one.
local function lowest_of(i)
  local z = zkey(i)
  for c = 2, 0, -1 do
    local lo, hi = claimable(c)
    local r = redis.call('ZRANGEBYSCORE', z, lo, hi, 'WITHSCORES', 'LIMIT', 0, 1)
    if #r > 0 then return {id = r[1], score = tonumber(r[2])} end
  end
  return nil
end
-- Per kernel, its first claimable runs in score order, walked locally: a
-- served run is put back at its new score, so most turns need no read. A
-- claim reads a few (up to four; a turn needs the best run and the next one of its
-- class; each score costs Redis a float's formatting and Lua its parsing)
-- and twice as many each time the local list runs out. A capped run sorts
-- after the claimable runs of its class, so the read skips to the next
-- class at the first capped one: however many runs are capped, a claim
-- reads at most one of them per class. `whole`: the list holds every
-- claimable run.
local lists = {}
local function load(i)
  local k = math.min(4, want + 1)
  if lists[i] then k = math.max(k, math.min(2 * lists[i].k, want + 1)) end
  local z, l, from, whole = zkey(i), {}, nil, false
  for _ = 1, 4 do
    local ask = k - #l
    local r
    if from then
      r = redis.call('ZRANGEBYSCORE', z, from, '+inf', 'WITHSCORES', 'LIMIT', 0, ask)
    else
      r = redis.call('ZRANGE', z, 0, ask - 1, 'WITHSCORES')
    end
    local skip
    for j = 1, #r, 2 do
      local score = tonumber(r[j + 1])
      if capped(score) then skip = class_of(score) break end
      l[#l + 1] = {id = r[j], score = score}
    end
    if skip then
      from = fmt((skip + 1) * CLASS)
    else
      whole = #r < 2 * ask
      break
    end
    if #l >= k then break end
  end
  lists[i] = {l = l, whole = whole, k = k}
end
for i = 1, nk do load(i) end
-- The lowest class any kernel has a claimable run of, so that the aging
-- tick costs nothing when every run is of one class: the list's last
-- run's class, or if the list is not whole, a count of each lower class's
-- claimable range (ZCOUNT answers an integer, no score).
local lowest_class = -1
for i = 1, nk do
  local L = lists[i]
  local last = L.l[#L.l]
  if last then
    local c = class_of(last.score)
    if not L.whole then
      for h = 2, c + 1, -1 do
        local lo, hi = claimable(h)
        if redis.call('ZCOUNT', zkey(i), lo, hi) > 0 then
          c = h
          break
        end
      end
    end
    if c > lowest_class then lowest_class = c end
  end
end
-- Kernel i's best claimable run (the head of its list, reloading once if
-- the list ran out while the zset has more), and the one after it.
local function first_of(i)
  if #lists[i].l == 0 and not lists[i].whole then load(i) end
  return lists[i].l[1]
end
local function second_of(i)
  if #lists[i].l < 2 and not lists[i].whole then load(i) end
  return lists[i].l[2]
end
-- Put `id` back in kernel i's list at `score` (nil: it left the zset),
-- keeping the list a prefix of the claimable runs in score order: a capped
-- run is no longer claimable, and one past the list's last read run (or
-- any, once the list is empty while the zset has more) is left for a
-- reload to find.
local function put_back(i, id, score)
  local L = lists[i].l
  for x = 1, #L do
    if L[x].id == id then table.remove(L, x) break end
  end
  if not score or capped(score) then return end
  local last = L[#L]
  if not lists[i].whole and (not last or score > last.score) then return end
  local k = #L + 1
  for x = 1, #L do
    if score < L[x].score then k = x break end
  end
  table.insert(L, k, {id = id, score = score})
end
-- Chunks a run gets per turn while others compete: one for a claim of a
-- few slots (long chunks: the slot-level share is exact), half of a large
-- read-ahead (short chunks: a turn costs a run-hash read and write and a
-- zset update, ~12 µs, which one chunk per turn would pay per chunk).
local QUANTUM = math.max(1, floor(want / 2))
-- The aging tick's counter: read (and advanced) only while a lower class
-- than the best's has runs, so it counts the chunks handed out while one
-- waits, and a claim among runs of one class costs no GET or INCRBY.
local tick, tick_from
local added, given, rounds = {}, 0, 0
local function pos_now()
  if not tick then tick, tick_from = num(redis.call('GET', KEYS[1])), given end
  return (tick + given - tick_from) % AGING
end
-- Now, in ms: the first entry's id says it (Redis's clock), no TIME call.
local ts
for i = 1, nk do added[i] = 0 end
while given < want and rounds < want + 16 do
  rounds = rounds + 1
  local best, bi
  for i = 1, nk do
    local e = first_of(i)
    if e and (not best or e.score < best.score) then best, bi = e, i end
  end
  -- The aging tick matters only if a lower class than the best's has runs.
  local aging = (not best or lowest_class > class_of(best.score)) and pos_now() == AGING - 1
  if aging then
    local low, li
    for i = 1, nk do
      local t = lowest_of(i)
      if t and (not low or class_of(t.score) > class_of(low.score)
          or (class_of(t.score) == class_of(low.score) and t.score < low.score)) then
        low, li = t, i
      end
    end
    if low then best, bi = low, li end
  end
  if not best then break end
  local class = class_of(best.score)
  -- QUANTUM chunks per turn while another run of the class competes,
  -- alone as many as wanted; never past the next aging tick if a lower
  -- class has runs.
  local m = 1
  -- The least vtime level (ms) of the other claimable runs of the class.
  local rival
  if not aging then
    m = math.min(QUANTUM, want - given)
    if lowest_class > class then m = math.min(m, AGING - 1 - pos_now()) end
    local alone = true
    for i = 1, nk do
      -- The next run of the class after the best in its list (claimable:
      -- capped runs sort after), or another kernel's best.
      local e
      if i == bi then e = second_of(i) else e = first_of(i) end
      if e and class_of(e.score) == class then
        alone = false
        local l = level_in(e.score)
        if not rival or l < rival then rival = l end
      end
    end
    if alone then
      m = want - given
      if lowest_class > class then m = math.min(m, AGING - 1 - pos_now()) end
    end
  end
  local run = prefix .. 'run:' .. best.id
  local v = redis.call('HMGET', run, 'state', 'next', 'total', 'qn', 'inflight', 'cap',
    'weight', 'task', 'params', 'csize', 'created_ms', 'wait_max', 'claims', 'wait_sum', 'class',
    'served', 'nserved', 'vbase')
  local z = zkey(bi)
  local new_score
  if not v[8] or not active(v[1]) then
    redis.call('ZREM', z, best.id)
  else
    local nxt, total, qn, infl, cap = num(v[2]), num(v[3]), num(v[4]), num(v[5]), num(v[6])
    local tpl, params, csize, created = v[8], num(v[9]), num(v[10]), num(v[11])
    if cap > 0 then m = math.min(m, cap - infl) end
    local weight, served, nserved, vbase = num(v[7]), num(v[16]), num(v[17]), num(v[18])
    -- The catch-up bound: at most CATCH_UP behind the least-served rival.
    local lifted = false
    if rival then
      local floor_vt = rival - CATCH_UP
      local vt = vtime(infl, weight, served, nserved, vbase)
      if vt < floor_vt then
        vbase = vbase + floor_vt - vt
        lifted = true
      end
    end
    local tasks = tkey(bi)
    local n, popped, wsum, wmax = 0, 0, 0, num(v[12])
    -- Fields 2, 3, 4 (index, start, end) and 9 (queued ms), as varints.
    local function append(c, attempt, queued)
      local start = c * csize
      local stop = start + csize
      if stop > params then stop = params end
      local t = tpl .. '\16' .. varint(c) .. '\24' .. varint(start) .. '\32' .. varint(stop)
      local id
      if attempt then
        id = redis.call('XADD', tasks, '*', 't', t .. '\72' .. varint(queued), 'a', attempt)
      else
        id = redis.call('XADD', tasks, '*', 't', t)
      end
      if not ts then ts = tonumber(string.match(id, '^(%d+)')) end
      local w = ts - queued
      if w < 0 then w = 0 end
      wsum = wsum + w
      if w > wmax then wmax = w end
      n = n + 1
    end
    if qn > 0 and m > 0 then
      local q = redis.call('LPOP', run .. ':queue', math.min(m, qn))
      if q then
        for _, e in ipairs(q) do
          popped = popped + 1
          local c, a, at = string.match(e, '^(%d+):(%d+):(%d+)$')
          if c then append(tonumber(c), a, tonumber(at)) end
        end
      end
    end
    while n < m and nxt < total do
      append(nxt, nil, created)
      nxt = nxt + 1
    end
    infl = infl + n
    qn = qn - popped
    if qn < 0 then qn = 0 end
    local claims = num(v[13]) + n
    redis.call('HSET', run, 'next', nxt, 'qn', qn, 'inflight', infl,
      'wait_max', wmax, 'claims', claims, 'wait_sum', num(v[14]) + wsum)
    if lifted then redis.call('HSET', run, 'vbase', fmt(vbase)) end
    if total - nxt + qn <= 0 then
      redis.call('ZREM', z, best.id)
    else
      new_score = sched_score(num(v[15]), infl, cap, vtime(infl, weight, served, nserved, vbase))
      redis.call('ZADD', z, fmt(new_score), best.id)
    end
    added[bi] = added[bi] + n
    given = given + n
  end
  put_back(bi, best.id, new_score)
end
if tick and given > tick_from then redis.call('INCRBY', KEYS[1], given - tick_from) end
local wakes = {}
if given == 0 then
  for i = 1, nk do
    local w = redis.call('XREVRANGE', wkey(i), '+', '-', 'COUNT', 1)
    if w[1] then wakes[i] = w[1][1] else wakes[i] = '0-0' end
  end
end
return {added, wakes}
