/**
 * docs/backends/postgres.md: open the PostgreSQL store, write a key, read it back.
 *
 *   DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres npx tsx examples/docs/backends/postgres.ts
 *
 * It runs once and exits.
 */
import { createPostgresStore } from 'rebalancer/postgres';

const store = await createPostgresStore({
  connectionString: process.env['DATABASE_URL'] ?? 'postgres://app@db.internal:5432/app?sslmode=verify-full',
  namespace: 'orders',
});
// or: openStore('postgres://app@db.internal/app?schema=rebalancer&listen=false', { namespace: 'orders' })

const put = await store.txn({ compare: [], then: [{ op: 'put', key: 'example/hello', value: 'world' }] });
const { kvs } = await store.range('example/');
console.log(`postgres: wrote at revision ${put.revision}, read back ${kvs.map((kv) => `${kv.key}=${kv.value}`)}`);
await store.close(); // ends the pool it created: the process can exit
