import { createEtcdStore } from '../../src/backends/etcd/index.js';
import { startEtcd } from '../harness/servers.js';
import { describeConformance } from './suite.js';

describeConformance('etcd', async () => {
  const server = await startEtcd();
  return {
    backend: 'etcd',
    url: server.url,
    // etcd grants whole seconds, at least 2 s with default election timing.
    ttlMs: 2000,
    // etcd's leader checks for expired leases every 500 ms, then commits the
    // revoke through Raft; the watch event follows the commit. Measured:
    // TTL + 0.1–0.5 s after the last acknowledged keep-alive.
    expiryBoundMs: 1000,
    open: (namespace) => createEtcdStore({ url: server.url, namespace }),
    restartServer: () => server.restart(),
    teardown: () => server.stop(),
  };
});
