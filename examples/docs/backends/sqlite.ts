/**
 * docs/backends/sqlite.md: open the SQLite store (a file in the current directory), write a key, read it back.
 *
 *   npx tsx examples/docs/backends/sqlite.ts        # from the repository root
 *
 * It runs once and exits.
 */
import { createSqliteStore } from 'rebalancer/sqlite';
const store = await createSqliteStore({ path: './rebalancer.db', namespace: 'orders' });
// or: await openStore('sqlite:./rebalancer.db', { namespace: 'orders' })

const put = await store.txn({ compare: [], then: [{ op: 'put', key: 'example/hello', value: 'world' }] });
const { kvs } = await store.range('example/');
console.log(`sqlite: wrote at revision ${put.revision}, read back ${kvs.map((kv) => `${kv.key}=${kv.value}`)}`);
await store.close(); // the process can exit once the store is closed
