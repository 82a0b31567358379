import pg from 'pg';
import { createPostgresStore } from '../../src/backends/postgres/index.js';
import { startPostgres } from '../harness/servers.js';
import { describeConformance } from './suite.js';

describeConformance('postgres', async () => {
  const server = await startPostgres();
  const pollIntervalMs = 1000;
  return {
    backend: 'postgres',
    url: server.url,
    ttlMs: 1000,
    // Keys vanish at the TTL plus a few ms while a client of the namespace runs (its reaper ticks at the earliest
    // expiry it knows); at worst one poll interval later. See docs/backends/postgres.md.
    expiryBoundMs: pollIntervalMs + 500,
    open: (namespace) => createPostgresStore({ connectionString: server.url, namespace, pollIntervalMs }),
    corruptRecord: async (namespace, key) => {
      const admin = new pg.Client(server.url);
      await admin.connect();
      try {
        await admin.query(
          `UPDATE rebalancer.kv SET value = '\\xc328'::bytea WHERE ns = $1 AND key = convert_to($2, 'UTF8')`,
          [namespace, key],
        );
      } finally {
        await admin.end();
      }
    },
    restartServer: () => server.restart(),
    teardown: () => server.stop(),
  };
});
