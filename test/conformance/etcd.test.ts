import { Etcd3 } from 'etcd3';
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
    putOverUnreadable: 'replaced',
    // A value that is not UTF-8, put with etcd's own client.
    corruptRecord: async (namespace, key) => {
      const raw = new Etcd3({ hosts: `http://127.0.0.1:${server.port}` });
      try {
        await raw.put(`rebalancer/${namespace}/k/${key}`).value(Buffer.from([0x61, 0xc3, 0x28]));
      } finally {
        raw.close();
      }
    },
    restartServer: () => server.restart(),
    teardown: () => server.stop(),
  };
});
