/**
 * Child processes for the SQLite fault tests.
 *
 *   hold <path> <holdMs>        take the write lock with the raw driver, write a row, print
 *                               {"holding":true}, keep the transaction open for holdMs (blocking
 *                               this process), then roll back and exit
 *   cas <path> <ns> <count> <goFile>
 *                               once <goFile> exists (so that racers start together), perform
 *                               <count> compare-and-swap increments of key "counter"
 *   open <path> <name> <goFile> once <goFile> exists, open the store (creating the file), put key <name>, close
 *   churn <path> <ns>           write, attach keys to sessions and delete, forever (to be killed -9)
 *
 * Every mode prints one JSON line when ready or done.
 */
import { existsSync } from 'node:fs';
import Database from 'better-sqlite3';
import { createSqliteStore } from '../../src/backends/sqlite/index.js';

const [mode, path, ...rest] = process.argv.slice(2);
const say = (msg: object): void => void process.stdout.write(`${JSON.stringify(msg)}\n`);

if (path === undefined) throw new Error('usage: sqlite-child.ts <mode> <path> ...');

switch (mode) {
  case 'hold': {
    const holdMs = Number(rest[0]);
    const db = new Database(path, { timeout: 5000 });
    db.exec('BEGIN IMMEDIATE');
    db.prepare(
      "INSERT INTO rebalancer_keys (ns, key, value, version, create_rev, mod_rev) VALUES ('faults', 'uncommitted', 'x', 1, 1, 1)",
    ).run();
    say({ holding: true });
    // Block the whole process, lock held, as a process stuck inside a transaction would.
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, holdMs);
    db.exec('ROLLBACK');
    db.close();
    say({ released: true });
    break;
  }
  case 'cas': {
    const [ns, count, goFile] = rest;
    const store = await createSqliteStore({ path, namespace: ns, requestTimeoutMs: 20_000 });
    say({ ready: true });
    while (!existsSync(String(goFile))) await new Promise((r) => setTimeout(r, 2));
    let conflicts = 0;
    for (let i = 0; i < Number(count); i++) {
      for (;;) {
        const cur = await store.get('counter');
        if (cur === undefined) throw new Error('counter missing');
        const r = await store.txn({
          compare: [{ key: 'counter', target: 'modRevision', op: '=', value: cur.modRevision }],
          then: [{ op: 'put', key: 'counter', value: String(Number(cur.value) + 1) }],
        });
        if (r.succeeded) break;
        conflicts++;
      }
    }
    await store.close();
    say({ done: true, conflicts });
    break;
  }
  case 'open': {
    const [name, goFile] = rest;
    say({ ready: true });
    while (!existsSync(String(goFile))) await new Promise((r) => setTimeout(r, 1));
    const store = await createSqliteStore({ path, namespace: 'opened' });
    await store.txn({ compare: [], then: [{ op: 'put', key: String(name), value: 'x' }] });
    await store.close();
    say({ done: true });
    break;
  }
  case 'churn': {
    const [ns] = rest;
    const store = await createSqliteStore({ path, namespace: ns });
    const session = await store.openSession({ ttlMs: 1000 });
    say({ ready: true, sessionId: session.id });
    for (let i = 0; ; i++) {
      await store.txn({
        compare: [],
        then: [
          {
            op: 'put',
            key: `churn/${i % 50}`,
            value: 'x'.repeat(i % 2000),
            session: i % 3 === 0 ? session : undefined,
          },
          { op: 'put', key: `other/${i % 7}`, value: String(i) },
        ],
      });
      if (i % 10 === 0) await store.txn({ compare: [], then: [{ op: 'deletePrefix', prefix: `churn/${i % 5}` }] });
    }
  }
  default:
    throw new Error(`unknown mode ${String(mode)}`);
}
