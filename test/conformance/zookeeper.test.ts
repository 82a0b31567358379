import zookeeper from 'node-zookeeper-client';
import { createZookeeperStore, type ZookeeperStore } from '../../src/backends/zookeeper/index.js';
import { leafName, splitKey } from '../../src/backends/zookeeper/layout.js';
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
    // The key's znode set to bytes that are not Rebalancer's envelope, with ZooKeeper's own client.
    corruptRecord: async (namespace, key) => {
      const store = (await createZookeeperStore({
        connectString: `127.0.0.1:${server.port}`,
        namespace,
      })) as ZookeeperStore;
      const { dirPart, leaf } = splitKey(key);
      const path = `${store.dirPath(dirPart)}/${leafName(leaf)}`;
      await store.close();
      const client = zookeeper.createClient(`127.0.0.1:${server.port}`, { sessionTimeout: 5000 });
      const connected = new Promise<void>((resolve) => client.once('connected', () => resolve()));
      client.connect();
      await connected;
      try {
        await new Promise<void>((resolve, reject) =>
          client.setData(path, Buffer.from([0xff, 0x00, 0x01]), -1, (e) => (e ? reject(e) : resolve())),
        );
      } finally {
        client.close();
      }
    },
    restartServer: () => server.restart(),
    teardown: () => server.stop(),
  };
});
