/**
 * `rebalancer/sqlite`: the embedded default store. One database file shared by
 * the processes of ONE host (see docs/backends/sqlite.md).
 *
 *   const store = await createSqliteStore({ path: './rebalancer.db', namespace: 'orders' });
 *   const store = await openStore('sqlite:./rebalancer.db');
 */
import type { CommonStoreOptions, Store } from '../../store/contract.js';
import { SqliteStore, type SqliteStoreOptions } from './store.js';
import { parseSqliteUrl } from './url.js';

export { SqliteStore, DEFAULT_BUSY_TIMEOUT_MS, DEFAULT_POLL_INTERVAL_MS } from './store.js';
export type { SqliteDriverOptions, SqliteStoreOptions } from './store.js';
export { parseSqliteUrl } from './url.js';
export { SCHEMA_VERSION } from './db.js';

/** Open (creating if needed) the database at `options.path`. */
export function createSqliteStore(options: SqliteStoreOptions): Promise<SqliteStore> {
  return SqliteStore.create(options);
}

/**
 * `sqlite:PATH` (relative or absolute, taken literally) or `sqlite:///abs/path`
 * (percent-decoded). `sqlite::memory:` is refused: other processes could not
 * share it.
 */
export async function openUrl(url: string, options: CommonStoreOptions = {}): Promise<Store> {
  return SqliteStore.create({ ...options, path: parseSqliteUrl(url) });
}
