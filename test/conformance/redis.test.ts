import { Redis } from 'ioredis';
import { createRedisStore } from '../../src/backends/redis/index.js';
import { startRedis } from '../harness/servers.js';
import { describeConformance } from './suite.js';

describeConformance('redis', async () => {
  const server = await startRedis();
  return {
    backend: 'redis',
    url: server.url,
    ttlMs: 1000,
    // Reads stop showing a session's keys at its expiry on the server clock;
    // watchers hear within one maintenance tick (250 ms) of the observer's store.
    expiryBoundMs: 500,
    open: (namespace) => createRedisStore({ url: server.url, namespace }),
    // The key's hash replaced by a string (`SET` on it): a record of the wrong type.
    corruptRecord: async (namespace, key) => {
      const raw = new Redis(server.port, '127.0.0.1');
      try {
        const name = `rb:{${namespace}}:k:${key}`;
        await raw.del(name);
        await raw.set(name, 'not a hash');
      } finally {
        raw.disconnect();
      }
    },
    restartServer: () => server.restart(),
    teardown: () => server.stop(),
  };
});
