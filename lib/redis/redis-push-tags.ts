import type { Redis } from 'ioredis';
import { TagLimitError } from '../errors/tag-limit.error.js';
import { checkTags, PushTags } from '../tags/push-tags.js';
import { DEFAULT_KEY_PREFIX, deviceKey, ensureConnected } from './redis-connection.js';
import { defineScripts, type ScriptedRedis } from './redis-scripts.js';

/** Options of `RedisPushTags`. */
export interface RedisPushTagsOptions {
  redis: Redis;
  /** Default `'np:'`. */
  keyPrefix?: string;
  /** Tags one device may carry. Default 256. */
  maxTagsPerDevice?: number;
  /** Members read per SSCAN page of a broadcast. Default 512. */
  pageSize?: number;
}

/**
 * Tags shared by every node of a Redis cluster: a device tagged through any
 * node is found by a tag-filtered broadcast from any node.
 *
 * Layout: `<prefix>{<uuid>}:t`, the device's tags (a set, in the device's
 * slot), and `<prefix>tag:{<tag>}`, the tag's devices (a set). `add` first
 * adds to the device's set (one script: all or none, at most
 * `maxTagsPerDevice`), then the device to each tag's set; `remove` takes the
 * device out of the tags' sets first, then the tags out of its set. A failure
 * in between (Redis gone) rejects, leaves the device's own set a superset of
 * what broadcasts see, and is repaired by retrying the call (every step is
 * idempotent). The two kinds of key are in different slots, so this works on
 * Redis Cluster, without one transaction.
 *
 * Bounds: `maxTagsPerDevice` per device and `MAX_TAG_LENGTH` per tag; the
 * number of devices is bounded by Redis' `maxmemory` (writes then fail with
 * Redis' OOM error, and `tag()` rejects). A broadcast reads each tag with
 * SSCAN, `pageSize` members at a time. SSCAN may return a member twice when
 * Redis resizes the set during the walk, so a device can very rarely be
 * pushed twice by one broadcast (latest-only retention keeps one message).
 * Tags do not expire: untag devices that are gone.
 */
export class RedisPushTags extends PushTags {
  readonly keyPrefix: string;
  readonly maxTagsPerDevice: number;
  private readonly redis: ScriptedRedis;
  private readonly pageSize: number;

  constructor(options: RedisPushTagsOptions) {
    super();
    this.redis = defineScripts(options.redis);
    this.keyPrefix = options.keyPrefix ?? DEFAULT_KEY_PREFIX;
    this.maxTagsPerDevice = options.maxTagsPerDevice ?? 256;
    this.pageSize = options.pageSize ?? 512;
  }

  /** Waits for the connection (the `redisCluster` plugin's store has usually opened it already). */
  override async open(): Promise<void> {
    await ensureConnected(this.redis, 'Redis (tags)');
  }

  /** Not counted locally: the memberships live in Redis. */
  get size(): number {
    return -1;
  }

  async add(uuid: string, tags: readonly string[]): Promise<void> {
    checkTags(tags);
    const distinct = [...new Set(tags)];
    if (distinct.length === 0) return;
    if ((await this.redis.npTagsAdd(deviceKey(this.keyPrefix, uuid, 't'), this.maxTagsPerDevice, ...distinct)) < 0) {
      throw new TagLimitError(this.maxTagsPerDevice, 'maxTagsPerDevice');
    }
    // Every tag, not only the new ones: a retry after a failure here completes the earlier call.
    const p = this.redis.pipeline();
    for (const t of distinct) p.sadd(this.tagKey(t), uuid);
    check(await p.exec());
  }

  async remove(uuid: string, tags?: readonly string[]): Promise<void> {
    if (tags) checkTags(tags);
    const own = deviceKey(this.keyPrefix, uuid, 't');
    const which = tags ? [...new Set(tags)] : await this.redis.smembers(own);
    if (which.length === 0) return;
    const out = this.redis.pipeline();
    for (const t of which) out.srem(this.tagKey(t), uuid);
    check(await out.exec());
    await this.redis.srem(own, ...which);
  }

  tagsOf(uuid: string): Promise<string[]> {
    return this.redis.smembers(deviceKey(this.keyPrefix, uuid, 't'));
  }

  async *members(tags: readonly string[]): AsyncIterable<string> {
    checkTags(tags);
    for (let i = 0; i < tags.length; i++) {
      const key = this.tagKey(tags[i]!);
      let cursor = '0';
      do {
        const [next, page] = await this.redis.sscan(key, cursor, 'COUNT', this.pageSize);
        cursor = next;
        // Each device once without a `seen` set as large as the tags: skip it under the tag that came first.
        const keep = i === 0 || page.length === 0 ? page : await this.notInEarlier(page, tags, i);
        for (const uuid of keep) yield uuid;
      } while (cursor !== '0');
    }
  }

  private async notInEarlier(page: string[], tags: readonly string[], i: number): Promise<string[]> {
    const p = this.redis.pipeline();
    for (let j = 0; j < i; j++) p.smismember(this.tagKey(tags[j]!), ...page);
    const replies = check(await p.exec()) as number[][];
    return page.filter((_, k) => replies.every((r) => r[k] === 0));
  }

  private tagKey(tag: string): string {
    return `${this.keyPrefix}tag:{${tag}}`;
  }
}

/** A pipeline's replies, or its first error thrown. */
function check(results: [Error | null, unknown][] | null): unknown[] {
  if (!results) throw new Error('nest-push/redis: pipeline was not executed (connection closed)');
  return results.map(([err, v]) => {
    if (err) throw err;
    return v;
  });
}
