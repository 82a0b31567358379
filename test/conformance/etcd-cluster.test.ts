import { createEtcdStore } from '../../src/backends/etcd/index.js';
import { startEtcdCluster } from '../harness/servers.js';
import { describeConformance } from './suite.js';

// The same contract against a three-member cluster: requests are spread over
// the members, so reads, writes, keep-alives and watches cross members.
describeConformance('etcd (3-member cluster)', async () => {
  const cluster = await startEtcdCluster();
  return {
    backend: 'etcd',
    url: cluster.url,
    ttlMs: 2000,
    expiryBoundMs: 1000,
    open: (namespace) => createEtcdStore({ url: cluster.url, namespace }),
    // The whole cluster goes down and comes back on the same data (members
    // wait for each other, so they start together).
    restartServer: async () => {
      for (const m of cluster.members) await m.kill();
      await Promise.all(cluster.members.map((m) => m.restart()));
    },
    teardown: () => cluster.stop(),
  };
});
