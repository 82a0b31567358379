import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { createSqliteStore } from '../../src/backends/sqlite/index.js';
import { describeConformance } from './suite.js';

describeConformance('sqlite', () => {
  const dir = mkdtempSync(join(tmpdir(), 'rebalancer-sqlite-conformance-'));
  const path = join(dir, 'store.db');
  return Promise.resolve({
    backend: 'sqlite',
    // Child-process clients share the file: that is what the backend is for.
    url: `sqlite:${path}`,
    ttlMs: 1000,
    // Any open store reaps a session one poll (25 ms) after it is due, and
    // every read reaps first; the rest is slack for a loaded 2-core machine.
    expiryBoundMs: 300,
    open: (namespace) => createSqliteStore({ path, namespace }),
    corruptRecord: (namespace, key) => {
      const raw = new Database(path);
      try {
        raw.prepare("UPDATE rebalancer_keys SET value = X'00FF10' WHERE ns = ? AND key = ?").run(namespace, key);
      } finally {
        raw.close();
      }
      return Promise.resolve();
    },
    teardown: () => {
      rmSync(dir, { recursive: true, force: true });
      return Promise.resolve();
    },
  });
});
