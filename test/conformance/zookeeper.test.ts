import { createZookeeperStore } from '../../src/backends/zookeeper/index.js';
import { startZookeeper } from '../harness/servers.js';
import { describeConformance } from './suite.js';

describeConformance('zookeeper', async () => {
  const server = await startZookeeper({ tickTimeMs: 500 });
  return {
    backend: 'zookeeper',
    url: server.url,
    ttlMs: 2000,
    // The server expires sessions in buckets of tickTime (500 ms here), at
    // most a tick after their timeout: the store asks for one tick less than
    // the TTL, so the session is gone at most TTL after the client was last
    // heard; the ephemerals go in one transaction and the watches fire at once.
    grantedTtlMs: 1500,
    expiryBoundMs: 1000,
    open: (namespace) => createZookeeperStore({ connectString: `127.0.0.1:${server.port}`, namespace }),
    restartServer: () => server.restart(),
    teardown: () => server.stop(),
  };
});
