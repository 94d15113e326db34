"""The Lua scripts of :mod:`mrsa.store.redis`: each is one atomic step and one round trip.

Conventions: ``KEYS``/``ARGV`` are listed above each script; a script returns -1 (or false) for an
unknown job, so the caller can raise ``KeyError`` as the memory store does. Keys a script builds
itself (a job's round hashes, an owner's active set) are not declared: one Redis master (with
replicas and Sentinel), not Redis Cluster; docs/service.md (*High availability*) says why, and
what a failover may lose. No script reads the clock or random numbers (times come in ``ARGV``),
so its replicated effects are what it did on the master.
"""

from __future__ import annotations

_TERMINAL = "local function terminal(s) return s == 'succeeded' or s == 'failed' or s == 'cancelled' end\n"

# KEYS: job, all jobs, owner jobs, owner active, tasks, status index (p:status:queued). ARGV: id,
# created_at, active(0/1), max active (-1: no limit), nfields, field/value pairs..., ncandidates,
# per stored candidate: round, index, Candidate JSON; then task JSON...
# Returns 1, 0 (exists already) or -n when the owner already has n ≥ max active jobs in flight.
# Stored candidates go to the round hashes (and their ``done:{round}`` counters) before any task is
# enqueued: a resumed job's workers find them stored.
CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local limit = tonumber(ARGV[4])
if limit >= 0 then
  local active = redis.call('SCARD', KEYS[4])
  if active >= limit then return -math.max(active, 1) end
end
local nf = tonumber(ARGV[5])
local fields = {}
for i = 1, nf * 2 do fields[i] = ARGV[5 + i] end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
if ARGV[3] == '1' then
  redis.call('SADD', KEYS[4], ARGV[1])
  redis.call('SADD', KEYS[6], ARGV[1])
end
local at = 6 + nf * 2
local nc = tonumber(ARGV[at])
for i = 0, nc - 1 do
  local r = ARGV[at + 1 + 3 * i]
  if redis.call('HSETNX', KEYS[1] .. ':round:' .. r, ARGV[at + 2 + 3 * i], ARGV[at + 3 + 3 * i]) == 1 then
    redis.call('HINCRBY', KEYS[1], 'done:' .. r, 1)
  end
end
for i = at + 1 + nc * 3, #ARGV do redis.call('XADD', KEYS[5], '*', 'task', ARGV[i]) end
return 1
"""

# KEYS: job, status index queued, status index running. ARGV: now, id.
MARK_RUNNING = """
if redis.call('HGET', KEYS[1], 'status') ~= 'queued' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'running', 'updated_at', ARGV[1])
redis.call('SMOVE', KEYS[2], KEYS[3], ARGV[2])
return 1
"""

# KEYS: job, round hash, tasks, released set. ARGV: index, candidate JSON, round, now, then per
# next-round task to release: "round:index", number of parents, the parents' indices, task JSON.
# Returns the round's count, -1 for an unknown job. A write to a finished job (a late duplicate)
# inherits the job's TTL. A task is enqueued once all its parents are in the round hash, at most
# once per job (the released set), and never for a job in a terminal state.
SAVE_CANDIDATE = (
    _TERMINAL
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return -1 end
local counter = 'done:' .. ARGV[3]
local count
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 1 then
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
  redis.call('HSET', KEYS[1], 'updated_at', ARGV[4])
  count = redis.call('HINCRBY', KEYS[1], counter, 1)
else
  count = tonumber(redis.call('HGET', KEYS[1], counter) or '0')
end
if terminal(status) then return count end
local i = 5
while i <= #ARGV do
  local key, n = ARGV[i], tonumber(ARGV[i + 1])
  local ready = redis.call('SISMEMBER', KEYS[4], key) == 0
  for j = 1, n do
    if ready and redis.call('HEXISTS', KEYS[2], ARGV[i + 1 + j]) == 0 then ready = false end
  end
  if ready then
    redis.call('SADD', KEYS[4], key)
    redis.call('XADD', KEYS[3], '*', 'task', ARGV[i + 2 + n])
  end
  i = i + 3 + n
end
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 and redis.call('EXISTS', KEYS[4]) == 1 then redis.call('PEXPIRE', KEYS[4], ttl) end
return count
"""
)

# KEYS: job, tasks. ARGV: population, last round, now, size of the last round, final task JSON...
# Moves the round pointer past every complete round (in order); enqueues the final tasks when it
# passes the last round.
# Returns {before, after}; {-2, -2} for an unknown job.
COMPLETE_ROUNDS = (
    _TERMINAL
    + """
local st = redis.call('HMGET', KEYS[1], 'status', 'round')
if not st[1] then return {-2, -2} end
local old = tonumber(st[2])
if terminal(st[1]) then return {old, old} end
local n, last, lastn = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[4])
local function size(round) if round == last then return lastn end return n end
local r = old
while r >= 0 and r <= last and tonumber(redis.call('HGET', KEYS[1], 'done:' .. r) or '0') >= size(r) do
  r = r + 1
end
if r ~= old then
  redis.call('HSET', KEYS[1], 'round', r, 'updated_at', ARGV[3])
  if r > last then
    for i = 5, #ARGV do redis.call('XADD', KEYS[2], '*', 'task', ARGV[i]) end
  end
end
return {old, r}
"""
)

# KEYS: job, checkpoints, events. ARGV: id, status, error JSON, answer JSON, result JSON ('' for
# none: keep the answer), now, retention seconds, key prefix. Returns 1 (done), 0 (already terminal),
# -1 (unknown).
TERMINATE = (
    _TERMINAL
    + """
local st = redis.call('HMGET', KEYS[1], 'status', 'round', 'answer', 'owner')
if not st[1] then return -1 end
if terminal(st[1]) then return 0 end
local answer = ARGV[4]
if ARGV[5] == '' then answer = st[3] or 'null' end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'error', ARGV[3], 'answer', answer,
           'finished_at', ARGV[6], 'updated_at', ARGV[6])
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'result', ARGV[5]) end
redis.call('SREM', ARGV[8] .. ':owner:' .. st[4] .. ':active', ARGV[1])
-- Status index: out of the in-flight sets, into the status's set of finished jobs (by finish time).
redis.call('SREM', ARGV[8] .. ':status:queued', ARGV[1])
redis.call('SREM', ARGV[8] .. ':status:running', ARGV[1])
redis.call('ZADD', ARGV[8] .. ':status:' .. ARGV[2], ARGV[6], ARGV[1])
local ttl = tonumber(ARGV[7])
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ttl) end
redis.call('EXPIRE', KEYS[1] .. ':released', ttl)
redis.call('EXPIRE', KEYS[1] .. ':votes', ttl)
-- Rounds can run ahead of the pointer: expire every round hash there is (they are contiguous).
local r = 0
while redis.call('EXPIRE', KEYS[1] .. ':round:' .. r, ttl) == 1 or r <= tonumber(st[2]) + 1 do r = r + 1 end
return 1
"""
)

# KEYS: job, a hash of versioned values. ARGV: field, version, value JSON. Keeps the newest version
# of each field (``field:n`` holds it): 1 written, 0 (the stored version is as new), -1 (unknown job).
# A write to a finished job inherits its TTL. A chunk checkpoint's version is its chunk count
# (checkpoints, "{round}:{index}"); a round's votes', the candidates they cover (votes, round).
SAVE_NEWEST = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local old = tonumber(redis.call('HGET', KEYS[2], ARGV[1] .. ':n') or '-1')
if old >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3], ARGV[1] .. ':n', ARGV[2])
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
return 1
"""

# KEYS: job, votes, events. ARGV: round, tallied, votes JSON, event JSON ('' for none), maxlen.
# A round's votes as SAVE_NEWEST keeps them, then the event that announces them (whether or not these
# votes were the newest) as ADD_EVENT does: one round trip per candidate instead of two, the votes
# written before the event. Returns 1 written, 0 (the stored votes cover as many), -1 (unknown job).
SAVE_VOTES = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local ttl = redis.call('PTTL', KEYS[1])
local saved = 0
local old = tonumber(redis.call('HGET', KEYS[2], ARGV[1] .. ':n') or '-1')
if old < tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[3], ARGV[1] .. ':n', ARGV[2])
  if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
  saved = 1
end
if ARGV[4] ~= '' then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', 'event', ARGV[4])
  if ttl > 0 then redis.call('PEXPIRE', KEYS[3], ttl) end
end
return saved
"""

# KEYS: round. ARGV: candidate indices to leave out. Returns {index, Candidate JSON, ...} of the
# round's other candidates: a worker clustering a round again reads only the ones it has not seen.
# Each HGET alone (no unpack of a long list into HMGET: Lua's C stack, see TOUCH).
ROUND_EXCEPT = """
local skip = {}
for i = 1, #ARGV do skip[ARGV[i]] = true end
local out = {}
for _, index in ipairs(redis.call('HKEYS', KEYS[1])) do
  if not skip[index] then
    out[#out + 1] = index
    out[#out + 1] = redis.call('HGET', KEYS[1], index)
  end
end
return out
"""

# KEYS: job, events. ARGV: event JSON, maxlen. Returns the event id, or false for an unknown job.
ADD_EVENT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'event', ARGV[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
return id
"""

# KEYS: tasks. ARGV: group, entry id. XACK + XDEL as one step, so the stream holds only queued and
# in-flight tasks (stats counts XLEN - pending as queued). Returns the number deleted.
ACK = """
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
return redis.call('XDEL', KEYS[1], ARGV[2])
"""

# KEYS: idempotency key. ARGV: claim ("{job id} {fingerprint}"), ttl seconds. Returns the earlier
# claim, or false when this call made it.
CLAIM_KEY = """
local old = redis.call('GET', KEYS[1])
if old then return old end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return false
"""

# KEYS: tasks. ARGV: group, consumer, idle ms to set (0 = heartbeat, else IDLE for a release), ids...
# Only ids this consumer still owns are touched: a task reclaimed by someone else stays theirs.
# XCLAIM ... JUSTID resets the idle time without counting a delivery. The ids are passed as the
# last expression of the call's argument list: Lua cuts ``unpack`` short anywhere else (`{'x',
# unpack(t), 'y'}` holds one element of t), which once kept only one task per worker alive. At
# most 1000 ids per XCLAIM: unpack of a very long table would overflow Lua's C stack.
TOUCH = """
local owned = {}
for i = 4, #ARGV do
  local e = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2])
  if #e > 0 then owned[#owned + 1] = ARGV[i] end
end
local tail = {'JUSTID'}
if ARGV[3] ~= '0' then tail = {'IDLE', ARGV[3], 'JUSTID'} end
local batch = 1000
for first = 1, #owned, batch do
  local args = {KEYS[1], ARGV[1], ARGV[2], 0}
  for i = first, math.min(first + batch - 1, #owned) do args[#args + 1] = owned[i] end
  for _, word in ipairs(tail) do args[#args + 1] = word end
  redis.call('XCLAIM', unpack(args))
end
return #owned
"""

# KEYS: tasks. ARGV: group, consumer. Deletes the consumer only when it holds no pending task
# (DELCONSUMER would make them unclaimable). Returns 1 when deleted.
FORGET_CONSUMER = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #pending > 0 then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

# KEYS: tasks. ARGV: group, consumer, idle ms, count, max deliveries.
# Returns {claimed, dead}, each a list of {id, task JSON, deliveries}. A task delivered more than
# max deliveries times is not run again: it is reported in ``dead`` and stays pending, now owned by
# the caller with its delivery count held at max deliveries, until BURY moves it to the dead-letter
# list once its job is failed. A caller that dies in between leaves it pending, and the next
# reclaim after the idle timeout reports it again: its job is failed even then.
RECLAIM = """
local count = tonumber(ARGV[4])
local maxd = tonumber(ARGV[5])
local claimed, dead = {}, {}
local cursor = '0-0'
local scans = 0
repeat
  local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], cursor, 'COUNT', count - #claimed)
  cursor = r[1]
  for _, entry in ipairs(r[2]) do
    if type(entry) == 'table' then
      local id = entry[1]
      local task = entry[2][2]
      local info = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
      local n = tonumber(info[1][4])
      if n > maxd then
        redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id, 'RETRYCOUNT', maxd, 'JUSTID')
        dead[#dead + 1] = {id, task, maxd}
      else
        claimed[#claimed + 1] = {id, task, n}
      end
    end
  end
  scans = scans + 1
until cursor == '0-0' or #claimed >= count or scans >= 10
return {claimed, dead}
"""

# KEYS: tasks, dead. ARGV: group, id, deliveries. Moves a task RECLAIM reported dead from the
# stream to the dead-letter list; 1 when this call moved it, 0 when it was no longer pending
# (another worker that also found it dead moved it first).
BURY = """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
local e = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
if #e == 0 then return 0 end
redis.call('RPUSH', KEYS[2], cjson.encode({id = ARGV[2], task = e[1][2][2], deliveries = tonumber(ARGV[3])}))
return 1
"""
