import { createZookeeperStore } from '../../src/backends/zookeeper/index.js';
import { startZookeeper } from '../harness/servers.js';
import { describeConformance } from './suite.js';

describeConformance('zookeeper', async () => {
  const server = await startZookeeper({ tickTimeMs: 500 });
  return {
    backend: 'zookeeper',
    url: server.url,
    ttlMs: 2000,
    // The server expires sessions in buckets of tickTime (500 ms here): at
    // most TTL + tickTime after the client was last heard, then deletes the
    // ephemerals in one transaction and fires the watches at once.
    expiryBoundMs: 1000,
    open: (namespace) => createZookeeperStore({ connectString: `127.0.0.1:${server.port}`, namespace }),
    restartServer: () => server.restart(),
    teardown: () => server.stop(),
  };
});
