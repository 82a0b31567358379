/**
 * docs/backends/zookeeper.md: open a ZooKeeper store by URL, and the same with createZookeeperStore.
 *
 *   npx tsx examples/docs/backends/zookeeper.ts     # needs the ensemble named below
 *
 * Type-checked in CI, not run there (no ensemble at those addresses).
 */
import { openStore } from 'rebalancer';
import { createZookeeperStore } from 'rebalancer/zookeeper';

const store = await openStore('zk://zk1:2181,zk2:2181,zk3:2181/my-app', { namespace: 'orders' });
// or
const same = await createZookeeperStore({ connectString: 'zk1:2181,zk2:2181', chroot: '/my-app', namespace: 'orders' });

for (const s of [store, same]) {
  const put = await s.txn({ compare: [], then: [{ op: 'put', key: 'example/hello', value: 'world' }] });
  console.log(`zookeeper: wrote at revision ${put.revision}`);
  await s.close(); // ends its connections: the process can exit
}
