/**
 * `rebalancer/redis`: the coordination store on Redis (≥ 5; tested on 7.0).
 * Every operation is one Lua script reading the server's clock; see
 * docs/backends/redis.md for the layout and what is (not) guaranteed.
 */
import type { CommonStoreOptions, Store } from '../../store/contract.js';
import { createRedisStore } from './store.js';

export { REDIS_SCHEMA_VERSION, RedisStore, createRedisStore, type RedisStoreOptions } from './store.js';
export { parseRedisUrl } from './url.js';

/** Open a store from `redis://…` or `rediss://…` (see parseRedisUrl for the form). */
export function openUrl(url: string, options: CommonStoreOptions = {}): Promise<Store> {
  return createRedisStore({ ...options, url });
}
