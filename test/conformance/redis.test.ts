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
    restartServer: () => server.restart(),
    teardown: () => server.stop(),
  };
});
