import type { Redis } from 'ioredis';

/**
 * The Lua scripts of the Redis store, router and registry. Each store or
 * router operation is ONE script (one round trip, atomic on the server). Every
 * script touches only the keys it is given, all of one device's keys share
 * the `{uuid}` hash tag, so the layout works on Redis Cluster.
 *
 * Per device (`P` = `<prefix>{<uuid>}:p`, a hash; `Q` = `<prefix>{<uuid>}:q`, a list):
 * - `n`: pending notice version;
 * - `ch`/`cl`: pending category mask, high/low 32 bits as unsigned decimals
 *   (Lua numbers are doubles and its `bit` library works on 32 bits);
 *   `cv`: version of the last category write;
 * - `m`/`mv`/`mo`: latest-only message content (binary), version, and the
 *   node that wrote it (so a node replacing it can tell that node);
 * - `Q` (queue mode): one entry per message, `version` (10 digits) +
 *   `deadline` epoch ms (15 digits) + origin length (3 digits) + origin +
 *   content; the head is what is sent.
 * Cleared fields are deleted, so a drained device has no keys at all.
 * `R` = `<prefix>{<uuid>}:r` is the device's route hash (`RedisPushRouter`);
 * the route scripts write it, and the write script may read its `n` (node).
 */

/** Drops expired entries from the head of the queue, appending their versions to `out`. */
const EXPIRE_QUEUE = `
local function expireQueue(Q, now, out)
  while true do
    local h = redis.call('LINDEX', Q, 0)
    if not h then return end
    if tonumber(string.sub(h, 11, 25)) > now then return end
    redis.call('LPOP', Q)
    out[#out + 1] = tonumber(string.sub(h, 1, 10))
  end
end
`;

/**
 * KEYS: P, Q, and optionally R (the device's route hash, same hash tag).
 * ARGV: kind ('n'|'c'|'m'|'q'), version, now, ttlMs, then
 * c: maskHi, maskLo; m: content, origin; q: entry, capacity.
 * Returns { replaced, head, maskHi, maskLo, replacedOrigin, routeNode, #expired, expired..., evicted... };
 * `routeNode` is R's node, nil when R is not given or holds no route. Reading
 * it here saves a cross-node push its separate route lookup (a round trip).
 */
const WRITE = `${EXPIRE_QUEUE}
local P, Q = KEYS[1], KEYS[2]
local route = false
if KEYS[3] then route = redis.call('HGET', KEYS[3], 'n') end
local kind, ver, now, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local replaced, head, hi, lo, origin = 0, 1, 0, 0, ''
local expired, evicted = {}, {}
if kind == 'n' then
  redis.call('HSET', P, 'n', ver)
elseif kind == 'c' then
  local f = redis.call('HMGET', P, 'ch', 'cl')
  hi = bit.bor(tonumber(f[1] or 0), tonumber(ARGV[5])) % 4294967296
  lo = bit.bor(tonumber(f[2] or 0), tonumber(ARGV[6])) % 4294967296
  redis.call('HSET', P, 'ch', hi, 'cl', lo, 'cv', ver)
elseif kind == 'm' then
  local f = redis.call('HMGET', P, 'mv', 'mo')
  replaced = tonumber(f[1] or 0)
  origin = f[2] or ''
  redis.call('HSET', P, 'm', ARGV[5], 'mv', ver, 'mo', ARGV[6])
else
  expireQueue(Q, now, expired)
  local cap = tonumber(ARGV[6])
  local len = redis.call('LLEN', Q)
  while len >= cap do
    local h = redis.call('LPOP', Q)
    if replaced ~= 0 then evicted[#evicted + 1] = replaced end
    replaced = tonumber(string.sub(h, 1, 10))
    origin = string.sub(h, 29, 28 + tonumber(string.sub(h, 26, 28)))
    len = len - 1
  end
  if len > 0 then head = 0 end
  redis.call('RPUSH', Q, ARGV[5])
end
redis.call('PEXPIRE', P, ttl)
redis.call('PEXPIRE', Q, ttl)
local r = { replaced, head, hi, lo, origin, route, #expired }
for i = 1, #expired do r[#r + 1] = expired[i] end
for i = 1, #evicted do r[#r + 1] = evicted[i] end
return r
`;

/**
 * KEYS: P, Q. ARGV: now.
 * Returns { n, ch, cl, cv, m, mv, queueHead, #expired, expired... } (missing fields are nil).
 */
const READ = `${EXPIRE_QUEUE}
local P, Q = KEYS[1], KEYS[2]
local expired = {}
expireQueue(Q, tonumber(ARGV[1]), expired)
local f = redis.call('HMGET', P, 'n', 'ch', 'cl', 'cv', 'm', 'mv')
local r = { f[1], f[2], f[3], f[4], f[5], f[6], redis.call('LINDEX', Q, 0), #expired }
for i = 1, #expired do r[#r + 1] = expired[i] end
return r
`;

/** KEYS: P. ARGV: version. Returns { cleared, remaining }. */
const ACK_NOTICE = `
local n = redis.call('HGET', KEYS[1], 'n')
if not n then return { 0, 0 } end
if n ~= ARGV[1] then return { 0, 1 } end
redis.call('HDEL', KEYS[1], 'n')
return { 1, 0 }
`;

/** KEYS: P. ARGV: ackedHi, ackedLo. Returns { remainingHi, remainingLo }. */
const ACK_CATEGORY = `
local P = KEYS[1]
local f = redis.call('HMGET', P, 'ch', 'cl')
if not f[1] then return { 0, 0 } end
local hi = bit.band(tonumber(f[1]), bit.bnot(tonumber(ARGV[1]))) % 4294967296
local lo = bit.band(tonumber(f[2]), bit.bnot(tonumber(ARGV[2]))) % 4294967296
if hi == 0 and lo == 0 then
  redis.call('HDEL', P, 'ch', 'cl', 'cv')
else
  redis.call('HSET', P, 'ch', hi, 'cl', lo)
end
return { hi, lo }
`;

/**
 * KEYS: P, Q. ARGV: version, now. The queue head (queue mode) or the
 * latest-only message is cleared when its version matches.
 * Returns { cleared, remaining, #expired, expired... }.
 */
const ACK_MESSAGE = `${EXPIRE_QUEUE}
local P, Q = KEYS[1], KEYS[2]
local expired = {}
expireQueue(Q, tonumber(ARGV[2]), expired)
local cleared = 0
local h = redis.call('LINDEX', Q, 0)
if h then
  if tonumber(string.sub(h, 1, 10)) == tonumber(ARGV[1]) then
    redis.call('LPOP', Q)
    cleared = 1
  end
else
  local mv = redis.call('HGET', P, 'mv')
  if mv == ARGV[1] then
    redis.call('HDEL', P, 'm', 'mv', 'mo')
    cleared = 1
  end
end
local remaining = 0
if redis.call('LLEN', Q) > 0 or redis.call('HEXISTS', P, 'mv') == 1 then remaining = 1 end
local r = { cleared, remaining, #expired }
for i = 1, #expired do r[#r + 1] = expired[i] end
return r
`;

/** KEYS: R. ARGV: node, transport, address, port, lastSeen, ttlMs. Unconditional (a route change is the newest news). */
const ROUTE_SET = `
redis.call('HSET', KEYS[1], 'n', ARGV[1], 't', ARGV[2], 'a', ARGV[3], 'p', ARGV[4], 's', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return 1
`;

/**
 * KEYS: R. ARGV: node, transport, address, port, lastSeen, ttlMs.
 * A periodic re-announcement: writes only when no route is stored, the stored
 * route is this node's, or it is older than ours (the device moved here).
 */
const ROUTE_REFRESH = `
local f = redis.call('HMGET', KEYS[1], 'n', 's')
if f[1] and f[1] ~= ARGV[1] and tonumber(f[2] or 0) >= tonumber(ARGV[5]) then return 0 end
redis.call('HSET', KEYS[1], 'n', ARGV[1], 't', ARGV[2], 'a', ARGV[3], 'p', ARGV[4], 's', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return 1
`;

/** KEYS: R. ARGV: node. Deletes the route only while it is still this node's. */
const ROUTE_DELETE = `
if redis.call('HGET', KEYS[1], 'n') == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`;

/**
 * KEYS: registry sorted set. ARGV: node ('' to only read), liveWindowMs, forgetAfterMs.
 * Scores are Redis server time (ms), so node clocks need not agree.
 * Returns { now, node1, score1, node2, score2, ... } of the live nodes.
 */
const REGISTRY_TICK = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[1] ~= '' then redis.call('ZADD', KEYS[1], now, ARGV[1]) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[3]))
local live = redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[2]), '+inf', 'WITHSCORES')
table.insert(live, 1, now)
return live
`;

/**
 * KEYS: a device's tag set. ARGV: maxTags, then the tags to add.
 * Adds them all, or none when the set would pass maxTags. Returns the number
 * added, or -1 when over the limit.
 */
const TAGS_ADD = `
local max = tonumber(ARGV[1])
local fresh = {}
for i = 2, #ARGV do
  if redis.call('SISMEMBER', KEYS[1], ARGV[i]) == 0 then fresh[#fresh + 1] = ARGV[i] end
end
if #fresh == 0 then return 0 end
if redis.call('SCARD', KEYS[1]) + #fresh > max then return -1 end
return redis.call('SADD', KEYS[1], unpack(fresh))
`;

const SCRIPTS = {
  npStoreWrite: { lua: WRITE, numberOfKeys: 2 },
  // The same script with the route key: one SHA, a fixed key count per command.
  npStoreWriteRouted: { lua: WRITE, numberOfKeys: 3 },
  npStoreRead: { lua: READ, numberOfKeys: 2 },
  npStoreAckNotice: { lua: ACK_NOTICE, numberOfKeys: 1 },
  npStoreAckCategory: { lua: ACK_CATEGORY, numberOfKeys: 1 },
  npStoreAckMessage: { lua: ACK_MESSAGE, numberOfKeys: 2 },
  npRouteSet: { lua: ROUTE_SET, numberOfKeys: 1 },
  npRouteRefresh: { lua: ROUTE_REFRESH, numberOfKeys: 1 },
  npRouteDelete: { lua: ROUTE_DELETE, numberOfKeys: 1 },
  npRegistryTick: { lua: REGISTRY_TICK, numberOfKeys: 1 },
  npTagsAdd: { lua: TAGS_ADD, numberOfKeys: 1 },
} as const;

type Arg = string | Buffer | number;
type Reply = (Buffer | string | number | null)[];

/** The commands `defineScripts` adds to a client (the `...Buffer` forms return Buffers for bulk replies). */
export interface NestPushScripts {
  npStoreWriteBuffer(p: string, q: string, ...argv: Arg[]): Promise<Reply>;
  npStoreWriteRoutedBuffer(p: string, q: string, r: string, ...argv: Arg[]): Promise<Reply>;
  npStoreReadBuffer(p: string, q: string, ...argv: Arg[]): Promise<Reply>;
  npStoreAckNotice(p: string, ...argv: Arg[]): Promise<number[]>;
  npStoreAckCategory(p: string, ...argv: Arg[]): Promise<number[]>;
  npStoreAckMessage(p: string, q: string, ...argv: Arg[]): Promise<number[]>;
  npRouteSet(r: string, ...argv: Arg[]): Promise<number>;
  npRouteRefresh(r: string, ...argv: Arg[]): Promise<number>;
  npRouteDelete(r: string, ...argv: Arg[]): Promise<number>;
  npRegistryTick(z: string, ...argv: Arg[]): Promise<(string | number)[]>;
  npTagsAdd(t: string, ...argv: Arg[]): Promise<number>;
}

export type ScriptedRedis = Redis & NestPushScripts;

/** Defines the scripts on a client (once; EVALSHA with an automatic EVAL fallback after a Redis restart). */
export function defineScripts(redis: Redis): ScriptedRedis {
  const r = redis as ScriptedRedis;
  if (typeof r.npStoreWriteBuffer !== 'function') {
    for (const [name, def] of Object.entries(SCRIPTS)) redis.defineCommand(name, def);
  }
  return r;
}
