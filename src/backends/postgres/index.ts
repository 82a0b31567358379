/**
 * `rebalancer/postgres`: the coordination store on PostgreSQL (pg driver).
 * See docs/backends/postgres.md.
 */
import type { CommonStoreOptions, Store } from '../../store/contract.js';
import { type PostgresStoreOptions, parsePostgresUrl } from './options.js';
import { PostgresStore } from './store.js';

export { PostgresStore } from './store.js';
export { type PostgresStoreOptions, parsePostgresUrl } from './options.js';
export { SCHEMA_VERSION as POSTGRES_SCHEMA_VERSION } from './schema.js';

/**
 * Connect, create the schema on first use (or check its version), and start
 * the store's reaper. Rejects with IncompatibleSchemaError when the schema
 * holds another layout version, StoreUnavailableError when the server cannot
 * be reached.
 */
export async function createPostgresStore(options: PostgresStoreOptions): Promise<PostgresStore> {
  const store = new PostgresStore(options);
  await store.init();
  return store;
}

/** `postgres://user[:password]@host[:port]/database[?sslmode=…&schema=…&listen=false&pollIntervalMs=…]`. */
export async function openUrl(url: string, options: CommonStoreOptions = {}): Promise<Store> {
  const parsed = parsePostgresUrl(url);
  return createPostgresStore({
    ...options,
    connectionString: parsed.connectionString,
    ...(parsed.schema === undefined ? {} : { schema: parsed.schema }),
    ...(parsed.listen === undefined ? {} : { listen: parsed.listen }),
    ...(parsed.pollIntervalMs === undefined ? {} : { pollIntervalMs: parsed.pollIntervalMs }),
  });
}
