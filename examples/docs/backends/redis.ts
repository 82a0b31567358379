/**
 * docs/backends/redis.md: open the Redis store over TLS with a private CA, write a key, read it back.
 *
 *   npx tsx examples/docs/backends/redis.ts         # needs a TLS Redis at redis.example.com and its CA in ./redis-ca.pem
 *
 * Type-checked in CI, not run there (no TLS Redis); examples/readme/store-contract.ts runs the plain form.
 */
import { readFileSync } from 'node:fs';
import { createRedisStore } from 'rebalancer/redis';

const store = await createRedisStore({
  url: 'rediss://app:secret@redis.example.com:6380/0',
  namespace: 'orders',
  redis: { tls: { ca: [readFileSync('./redis-ca.pem')] } }, // any ioredis connection option, applied over the URL
});
// or: openStore('redis://127.0.0.1:6379', { namespace: 'orders' })

const put = await store.txn({ compare: [], then: [{ op: 'put', key: 'example/hello', value: 'world' }] });
const { kvs } = await store.range('example/');
console.log(`redis: wrote at revision ${put.revision}, read back ${kvs.map((kv) => `${kv.key}=${kv.value}`)}`);
await store.close(); // ends its connections: the process can exit
