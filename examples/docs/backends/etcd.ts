/**
 * docs/backends/etcd.md: open an etcd store by URL, and one with TLS (mutual TLS) and user authentication.
 *
 *   ETCD_PASSWORD=… npx tsx examples/docs/backends/etcd.ts    # needs the clusters named below and the PEM files
 *
 * Type-checked in CI, not run there (no TLS etcd cluster at those addresses).
 */
import { readFileSync } from 'node:fs';
import { openStore } from 'rebalancer';
import { createEtcdStore } from 'rebalancer/etcd';

const store = await openStore('etcd://10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379', { namespace: 'orders' });

// or, with TLS and authentication:
const secure = await createEtcdStore({
  url: 'etcds://etcd-1.internal:2379,etcd-2.internal:2379',
  namespace: 'orders',
  etcd: {
    credentials: {
      rootCertificate: readFileSync('./ca.pem'),
      privateKey: readFileSync('./client-key.pem'),
      certChain: readFileSync('./client.pem'),
    },
    auth: { username: 'rebalancer', password: process.env['ETCD_PASSWORD'] ?? '' },
  },
});

for (const s of [store, secure]) {
  const put = await s.txn({ compare: [], then: [{ op: 'put', key: 'example/hello', value: 'world' }] });
  console.log(`etcd: wrote at revision ${put.revision}`);
  await s.close(); // ends its connections: the process can exit
}
