/**
 * SQLite-specific behaviour: URL and option parsing, data read back that
 * Rebalancer did not write, schema versions, the key-range arithmetic behind
 * prefix reads, clock-reset detection and a deleted database file.
 */
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { createSqliteStore, parseSqliteUrl, type SqliteStore } from '../../src/backends/sqlite/index.js';
import { prefixUpperBound, commonPrefix } from '../../src/backends/sqlite/db.js';
import { hostMonotonicMs } from '../../src/backends/sqlite/clock.js';
import { VirtualClock } from '../../src/store/clock.js';
import {
  ClosedError,
  CorruptDataError,
  IncompatibleSchemaError,
  InvalidArgumentError,
  StoreDataLostError,
} from '../../src/errors.js';
import { openStore } from '../../src/store/open.js';
import type { Store, WatchHint } from '../../src/store/contract.js';
import { eventually, sleep } from '../harness/wait.js';

const root = mkdtempSync(join(tmpdir(), 'rebalancer-sqlite-unit-'));
let seq = 0;
const freshPath = (): string => join(root, `db${++seq}.sqlite`);
const opened: Store[] = [];

async function open(path: string, namespace = 'ns', extra: { pollIntervalMs?: number } = {}): Promise<SqliteStore> {
  const s = await createSqliteStore({ path, namespace, ...extra });
  opened.push(s);
  return s;
}

async function rejection(p: Promise<unknown>): Promise<unknown> {
  return p.then(
    () => undefined,
    (e: unknown) => e,
  );
}

afterEach(async () => {
  for (const s of opened.splice(0)) await s.close();
});

afterAll(() => {
  rmSync(root, { recursive: true, force: true });
});

describe('sqlite URLs and options', () => {
  it('accepts sqlite:PATH (relative or absolute) and sqlite:///abs/path', () => {
    expect(parseSqliteUrl('sqlite:./x.db')).toBe(resolve('x.db'));
    expect(parseSqliteUrl('sqlite:x.db')).toBe(resolve('x.db'));
    expect(parseSqliteUrl(`sqlite:${root}/a.db`)).toBe(join(root, 'a.db'));
    expect(parseSqliteUrl(`SQLITE:${root}/a.db`)).toBe(join(root, 'a.db'));
    mkdirSync(join(root, 'with space'), { recursive: true });
    expect(parseSqliteUrl(`sqlite://${root}/with%20space/a.db`)).toBe(join(root, 'with space', 'a.db'));
    // The plain form is literal: a % in a file name stays a %.
    expect(parseSqliteUrl(`sqlite:${root}/100%25.db`)).toBe(join(root, '100%25.db'));
  });

  it('rejects URLs it cannot serve, saying what a valid one looks like', () => {
    writeFileSync(join(root, 'plain-file'), '');
    const cases: [string, RegExp][] = [
      [`sqlite:${root}/plain-file/x/y.db`, /\(a part of the path is not a directory\); use a path/],
      ['sqlite:', /sqlite:PATH/],
      ['sqlite::memory:', /other processes/],
      ['sqlite:file:x.db?mode=memory', /other processes/],
      ['sqlite://host/x.db', /names a host/],
      [`sqlite://${root}/x.db?cache=shared`, /query/],
      [`sqlite:${root}/missing-dir/x.db`, /does not exist.*create it first/],
      [`sqlite:${root}`, /not a regular file/],
      ['redis://x', /sqlite:PATH/],
    ];
    for (const [url, msg] of cases) {
      let err: unknown;
      try {
        parseSqliteUrl(url);
      } catch (e) {
        err = e;
      }
      expect(err, url).toBeInstanceOf(InvalidArgumentError);
      expect((err as Error).message, url).toMatch(msg);
    }
  });

  it('opens through openStore and rejects bad options', async () => {
    const path = freshPath();
    const s = await openStore(`sqlite:${path}`, { namespace: 'via-url' });
    opened.push(s);
    expect(s.backend).toBe('sqlite');
    expect(s.namespace).toBe('via-url');
    expect(await rejection(openStore('sqlite::memory:'))).toBeInstanceOf(InvalidArgumentError);
    const bad = [
      { path, pollIntervalMs: 0 },
      { path, busyTimeoutMs: -1 },
      { path, synchronous: 'off' as 'full' },
      { path, namespace: 'bad/ns' },
      { path, requestTimeoutMs: 0 },
      { path: '' },
    ];
    for (const o of bad)
      expect(await rejection(createSqliteStore(o)), JSON.stringify(o)).toBeInstanceOf(InvalidArgumentError);
  });

  it('refuses a file that is not a SQLite database, and leaves it alone', async () => {
    const path = freshPath();
    writeFileSync(path, 'this is not a database, it is a text file with enough bytes to have a header\n'.repeat(4));
    const before = readFileSync(path);
    const err = await rejection(createSqliteStore({ path }));
    expect(err).toBeInstanceOf(InvalidArgumentError);
    expect((err as Error).message).toMatch(/not a SQLite database/);
    expect(readFileSync(path).equals(before)).toBe(true);
  });

  it('refuses a file that holds another application’s tables, and leaves it alone', async () => {
    for (const ddl of [
      "CREATE TABLE users (name TEXT); INSERT INTO users VALUES ('ada')",
      // Even next to Rebalancer's own tables (a file it shared before this was refused).
      'CREATE TABLE rebalancer_meta (name TEXT PRIMARY KEY, value ANY NOT NULL); CREATE VIEW report AS SELECT 1',
    ]) {
      const path = freshPath();
      const raw = new Database(path);
      raw.exec(ddl);
      raw.close();
      const before = readFileSync(path);
      const err = await rejection(createSqliteStore({ path }));
      expect(err, ddl).toBeInstanceOf(InvalidArgumentError);
      const message = (err as Error).message;
      expect(message).toContain(path);
      expect(message).toMatch(/"users"|"report"/);
      expect(message).toContain('a database file of its own');
      expect(message).toContain('Nothing was changed');
      // Not even switched to WAL mode.
      expect(readFileSync(path).equals(before), ddl).toBe(true);
      expect(existsSync(`${path}-wal`)).toBe(false);
    }
    // Through a URL too.
    const path = freshPath();
    const raw = new Database(path);
    raw.exec('CREATE TABLE orders (id INTEGER)');
    raw.close();
    expect(await rejection(openStore(`sqlite:${path}`))).toBeInstanceOf(InvalidArgumentError);
  });

  it('opens an empty file, and a file with only its own tables', async () => {
    const path = freshPath();
    writeFileSync(path, '');
    const s = await open(path);
    await s.txn({ compare: [], then: [{ op: 'put', key: 'k', value: 'v' }] });
    await s.close();
    const again = await open(path);
    expect((await again.get('k'))?.value).toBe('v');
  });
});

describe('sqlite prefix ranges', () => {
  it('computes the successor of a prefix in code point order', () => {
    expect(prefixUpperBound('a/')).toBe('a0');
    expect(prefixUpperBound('%')).toBe('&');
    expect(prefixUpperBound('a\u{d7ff}')).toBe('a\u{e000}');
    expect(prefixUpperBound('a\u{ffff}')).toBe('a\u{10000}');
    expect(prefixUpperBound('a\u{10ffff}')).toBe('b');
    expect(prefixUpperBound('\u{10ffff}\u{10ffff}')).toBeUndefined();
    expect(commonPrefix('ab😀x', 'ab😁x')).toBe('ab');
    expect(commonPrefix('abc', 'abd')).toBe('ab');
  });

  it('reads exactly the keys under any prefix, in JS string order', async () => {
    const s = await open(freshPath());
    const keys = [
      'a',
      'a%',
      'a%b',
      'a_',
      'a_b',
      'a\u{ffff}',
      'a\u{10000}',
      'a\u{10ffff}',
      'a\u{10ffff}z',
      'b',
      '\u{10ffff}x',
    ];
    await s.txn({ compare: [], then: keys.map((key) => ({ op: 'put' as const, key, value: key })) });
    for (const prefix of ['', 'a', 'a%', 'a_', 'a\u{ffff}', 'a\u{10000}', 'a\u{10ffff}', '\u{10ffff}', 'zz']) {
      const want = keys.filter((k) => k.startsWith(prefix)).sort();
      const got = (await s.range(prefix)).kvs.map((kv) => kv.key);
      expect(got, JSON.stringify(prefix)).toEqual(want);
    }
    const del = await s.txn({ compare: [], then: [{ op: 'deletePrefix', prefix: 'a\u{10ffff}' }] });
    expect(del.results[0]).toMatchObject({ deleted: 2 });
    expect((await s.range('a')).kvs.map((kv) => kv.key)).not.toContain('a\u{10ffff}z');
  });
});

describe('sqlite watches', () => {
  it('hints only watchers whose prefix saw a change, including changes by other connections', async () => {
    const path = freshPath();
    const writer = await open(path);
    const watcher = await open(path);
    const a: WatchHint[] = [];
    const b: WatchHint[] = [];
    const all: WatchHint[] = [];
    await watcher.watch('a/', (h) => a.push(h));
    await watcher.watch('b/', (h) => b.push(h));
    await watcher.watch('', (h) => all.push(h));
    const w1 = await writer.txn({ compare: [], then: [{ op: 'put', key: 'a/1', value: 'x' }] });
    await eventually(() => a.length > 0 && all.length > 0, { what: 'hints on a/ and on everything', timeoutMs: 2000 });
    expect(a.at(-1)).toEqual({ reason: 'change', revision: w1.revision });
    const w2 = await writer.txn({
      compare: [],
      then: [
        { op: 'deletePrefix', prefix: 'a/' },
        { op: 'put', key: 'b/1', value: 'y' },
      ],
    });
    await eventually(() => b.length > 0, { what: 'a hint on b/', timeoutMs: 2000 });
    expect(b.at(-1)?.revision).toBe(w2.revision);
    const before = a.length;
    await writer.txn({ compare: [], then: [{ op: 'put', key: 'b/2', value: 'z' }] });
    await sleep(150);
    expect(a.length).toBe(before);
  });

  it('hints every watcher when it fell behind the change log', async () => {
    const path = freshPath();
    const watcher = await open(path);
    const hints: WatchHint[] = [];
    await watcher.watch('never/', (h) => hints.push(h));
    const raw = new Database(path);
    raw.exec("UPDATE rebalancer_namespaces SET revision = revision + 5000 WHERE ns = 'ns'");
    raw.close();
    await eventually(() => hints.length > 0, { what: 'a hint after the jump of the revision', timeoutMs: 2000 });
    expect(hints[0]?.reason).toBe('change');
  });
});

describe('sqlite timers', () => {
  it('runs its poll and the announcement of other stores’ commits on the injected clock', async () => {
    const path = freshPath();
    const clock = new VirtualClock();
    const watched = await createSqliteStore({ path, namespace: 'ns', clock, pollIntervalMs: 25 });
    opened.push(watched);
    const writer = await open(path);
    const hints: WatchHint[] = [];
    await watched.watch('', (h) => hints.push(h));
    const w = await writer.txn({ compare: [], then: [{ op: 'put', key: 'k', value: 'v' }] });
    // Real time passes, the store's clock does not: nothing of it may run.
    await new Promise((r) => setTimeout(r, 200));
    expect(hints).toEqual([]);
    await clock.runFor(25);
    expect(hints).toEqual([{ reason: 'change', revision: w.revision }]);
  });
});

describe('sqlite data that Rebalancer did not write', () => {
  const corrupt = async (sql: string): Promise<{ s: SqliteStore; path: string }> => {
    const path = freshPath();
    const s = await open(path);
    await s.txn({
      compare: [],
      then: [
        { op: 'put', key: 'ok', value: 'fine' },
        { op: 'put', key: 'bad', value: 'soon garbage' },
      ],
    });
    const raw = new Database(path);
    raw.exec(sql);
    raw.close();
    return { s, path };
  };

  const expectCorrupt = async (p: Promise<unknown>, key: string): Promise<void> => {
    const err = await rejection(p);
    expect(err).toBeInstanceOf(CorruptDataError);
    expect((err as CorruptDataError).key).toBe(key);
    expect((err as Error).message).toContain(key);
  };

  it('reports a BLOB value as CorruptDataError naming the key, and never overwrites it', async () => {
    const { s, path } = await corrupt("UPDATE rebalancer_keys SET value = X'00FF10' WHERE key = 'bad'");
    await expectCorrupt(s.get('bad'), 'bad');
    await expectCorrupt(s.range(''), 'bad');
    await expectCorrupt(s.txn({ compare: [{ key: 'bad', target: 'exists', exists: true }], then: [] }), 'bad');
    await expectCorrupt(s.txn({ compare: [], then: [{ op: 'put', key: 'bad', value: 'repair?' }] }), 'bad');
    expect((await s.get('ok'))?.value).toBe('fine');
    const raw = new Database(path, { readonly: true });
    expect(raw.prepare("SELECT typeof(value) FROM rebalancer_keys WHERE key = 'bad'").pluck().get()).toBe('blob');
    raw.close();
    // Deleting it is allowed: that is how an operator clears it.
    await s.txn({ compare: [], then: [{ op: 'delete', key: 'bad' }] });
    expect((await s.range('')).kvs.map((kv) => kv.key)).toEqual(['ok']);
  });

  it('reports text that is not valid UTF-8 as CorruptDataError', async () => {
    const { s } = await corrupt("UPDATE rebalancer_keys SET value = CAST(X'61FF62' AS TEXT) WHERE key = 'bad'");
    await expectCorrupt(s.get('bad'), 'bad');
    await expectCorrupt(s.range('b'), 'bad');
  });

  it('reports a key that is not valid UTF-8, and malformed metadata', async () => {
    const { s } = await corrupt(
      "UPDATE rebalancer_keys SET key = CAST(X'62FF' AS TEXT) WHERE key = 'bad'; " +
        "INSERT INTO rebalancer_keys (ns, key, value, version, create_rev, mod_rev) VALUES ('ns', 'meta', 'v', 'one', 1, 1)",
    );
    const err = await rejection(s.range('b'));
    expect(err).toBeInstanceOf(CorruptDataError);
    await expectCorrupt(s.get('meta'), 'meta');
    expect((await s.get('ok'))?.value).toBe('fine');
  });
});

describe('sqlite errors', () => {
  it('reports a damaged file in words that name it and say what to do, with SQLite’s error as the cause', async () => {
    const path = freshPath();
    const s = await open(path);
    // Enough rows for the keys table to span many pages.
    for (let i = 0; i < 20; i++) {
      await s.txn({
        compare: [],
        then: Array.from({ length: 50 }, (_, j) => ({ op: 'put' as const, key: `k${i}/${j}`, value: 'v'.repeat(200) })),
      });
    }
    await s.close();
    // Scribble over everything after the first page (the schema), as a failing disk would.
    const bytes = readFileSync(path);
    bytes.fill(0xa5, 4096 * 2);
    writeFileSync(path, bytes);
    const err = await rejection(
      (async () => {
        const again = await open(path);
        await again.range('');
      })(),
    );
    expect(err).toBeInstanceOf(CorruptDataError);
    const message = (err as Error).message;
    expect(message).toContain(`the database file ${path} is damaged`);
    expect(message).toContain('restore it from a backup or delete it');
    expect(message).not.toMatch(/SQLITE_|database disk image is malformed/);
    expect((err as Error).cause).toMatchObject({ code: expect.stringMatching(/^SQLITE_(CORRUPT|NOTADB)/) });
  });
});

describe('sqlite schema versions', () => {
  it('refuses a newer schema version and changes nothing', async () => {
    const path = freshPath();
    const s = await open(path);
    await s.txn({ compare: [], then: [{ op: 'put', key: 'k', value: 'v' }] });
    await s.close();
    const raw = new Database(path);
    raw.exec("UPDATE rebalancer_meta SET value = 2 WHERE name = 'schema_version'");
    const dump = (): unknown => ({
      ns: raw.prepare('SELECT * FROM rebalancer_namespaces ORDER BY ns').all(),
      keys: raw.prepare('SELECT * FROM rebalancer_keys').all(),
      meta: raw.prepare('SELECT * FROM rebalancer_meta').all(),
    });
    const before = dump();
    const err = await rejection(createSqliteStore({ path, namespace: 'other' }));
    expect(err).toBeInstanceOf(IncompatibleSchemaError);
    expect((err as IncompatibleSchemaError).found).toBe(2);
    expect((err as Error).message).toMatch(/upgrade Rebalancer/);
    expect(dump()).toEqual(before);
    raw.close();
  });

  it('refuses Rebalancer tables without a version, and an unreadable version', async () => {
    const p1 = freshPath();
    const raw1 = new Database(p1);
    raw1.exec('CREATE TABLE rebalancer_keys (x)');
    raw1.close();
    expect(await rejection(createSqliteStore({ path: p1 }))).toBeInstanceOf(IncompatibleSchemaError);
    const p2 = freshPath();
    await (await createSqliteStore({ path: p2 })).close();
    const raw2 = new Database(p2);
    raw2.exec("UPDATE rebalancer_meta SET value = 'v1-beta' WHERE name = 'schema_version'");
    raw2.close();
    expect(await rejection(createSqliteStore({ path: p2 }))).toBeInstanceOf(CorruptDataError);
  });
});

describe('sqlite revisions and expiry', () => {
  it('seeds a new namespace from the wall clock and persists its revision', async () => {
    const path = freshPath();
    const before = Date.now();
    const a = await open(path, 'seeded');
    const r0 = (await a.range('')).revision;
    expect(r0).toBeGreaterThanOrEqual(before);
    const w = await a.txn({ compare: [], then: [{ op: 'put', key: 'k', value: 'v' }] });
    expect(w.revision).toBe(r0 + 1);
    await a.close();
    const b = await open(path, 'seeded');
    expect((await b.range('')).revision).toBe(w.revision);
    expect((await b.txn({ compare: [], then: [{ op: 'put', key: 'k', value: 'v2' }] })).revision).toBe(w.revision + 1);
  });

  it('expires every session when the monotonic clock restarted (reboot), once', async () => {
    const path = freshPath();
    const a = await open(path);
    await a.txn({ compare: [], then: [{ op: 'put', key: 'plain', value: 'v' }] });
    await a.close();
    // A session "renewed" an hour from now: the file was written by a previous boot.
    const raw = new Database(path);
    const now = Math.ceil(hostMonotonicMs());
    raw
      .prepare('INSERT INTO rebalancer_sessions (id, ns, ttl_ms, expires_at_ms) VALUES (?, ?, ?, ?)')
      .run('old-boot', 'ns', 5000, now + 3_600_000 + 5000);
    raw
      .prepare(
        "INSERT INTO rebalancer_keys (ns, key, value, version, create_rev, mod_rev, session_id) VALUES ('ns', 'held', 'v', 1, 1, 1, 'old-boot')",
      )
      .run();
    raw.close();
    const b = await open(path);
    expect(await b.get('held')).toBeUndefined();
    expect((await b.get('plain'))?.value).toBe('v');
    const raw2 = new Database(path, { readonly: true });
    expect(raw2.prepare('SELECT count(*) FROM rebalancer_sessions').pluck().get()).toBe(0);
    raw2.close();
  });

  it('drops keys attached to a session that does not exist (a hand-deleted session row)', async () => {
    const path = freshPath();
    await (await createSqliteStore({ path })).close();
    const raw = new Database(path);
    raw.exec(
      "INSERT INTO rebalancer_keys (ns, key, value, version, create_rev, mod_rev, session_id) VALUES ('ns', 'ghost', 'v', 1, 1, 1, 'no-such-session')",
    );
    raw.close();
    const s = await open(path);
    expect(await s.get('ghost')).toBeUndefined();
    const raw2 = new Database(path, { readonly: true });
    expect(raw2.prepare('SELECT count(*) FROM rebalancer_keys').pluck().get()).toBe(0);
    raw2.close();
  });

  it('reaps an abandoned session on its own: keys vanish and watchers hear, with no client of it alive', async () => {
    const path = freshPath();
    const owner = await open(path, 'ns', { pollIntervalMs: 20 });
    const observer = await open(path, 'ns', { pollIntervalMs: 20 });
    const session = await owner.openSession({ ttlMs: 1000 });
    await owner.txn({ compare: [], then: [{ op: 'put', key: 'w/held', value: 'v', session }] });
    const hints: WatchHint[] = [];
    const w = await observer.watch('w/', (h) => hints.push(h));
    // The owner "dies": its keep-alives stop, nothing is revoked.
    (session as unknown as { abandon(): void }).abandon();
    const start = Date.now();
    await eventually(() => hints.length > 0, {
      what: "a hint that the abandoned session's key vanished",
      timeoutMs: 3000,
    });
    const heardAfterMs = Date.now() - start;
    expect(heardAfterMs).toBeGreaterThan(500);
    expect(await observer.get('w/held')).toBeUndefined();
    await w.close();
  });

  it('reports sessions expired and resyncs watchers when the database file is deleted', async () => {
    const path = freshPath();
    const s = await open(path, 'ns', { pollIntervalMs: 20 });
    const session = await s.openSession({ ttlMs: 5000 });
    const held = await s.txn({ compare: [], then: [{ op: 'put', key: 'k', value: 'v', session }] });
    const hints: WatchHint[] = [];
    await s.watch('', (h) => hints.push(h));
    unlinkSync(path);
    const end = await Promise.race([session.ended, new Promise((r) => setTimeout(() => r('timeout'), 3000))]);
    expect(end).toMatchObject({ state: 'expired' });
    // Every lock lived in the deleted file: the data this client worked in is gone (docs/adr/0009).
    expect((end as { cause: unknown }).cause).toBeInstanceOf(StoreDataLostError);
    await eventually(() => hints.some((h) => h.reason === 'resync'), { what: 'a resync hint', timeoutMs: 3000 });
    // A new file: empty, and revisions do not repeat (seeded from the wall clock).
    expect(await s.get('k')).toBeUndefined();
    const w = await s.txn({ compare: [], then: [{ op: 'put', key: 'k2', value: 'v' }] });
    expect(w.revision).toBeGreaterThan(held.revision);
  });

  it('closes idempotently and refuses use after close', async () => {
    const s = await createSqliteStore({ path: freshPath() });
    const session = await s.openSession({ ttlMs: 1000 });
    await Promise.all([s.close(), s.close()]);
    expect(session.state).toBe('closed');
    expect(await rejection(s.get('k'))).toBeInstanceOf(ClosedError);
    expect(await rejection(s.watch('', () => undefined))).toBeInstanceOf(ClosedError);
  });
});
