/**
 * PostgreSQL backend specifics: URL and option parsing, the schema's creation
 * and versioning, data read back that Rebalancer did not write, revisions
 * across a lost schema, polling-only watches, and a caller-owned pool.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import {
  POSTGRES_SCHEMA_VERSION,
  PostgresStore,
  createPostgresStore,
  openUrl,
  parsePostgresUrl,
} from '../../src/backends/postgres/index.js';
import { decodeNotice, encodeNotice, noticeMatches } from '../../src/backends/postgres/notify.js';
import { prefixRange } from '../../src/backends/postgres/rows.js';
import {
  CorruptDataError,
  IncompatibleSchemaError,
  InvalidArgumentError,
  LimitExceededError,
  StoreDataLostError,
  StoreRecoveringError,
  StoreUnavailableError,
} from '../../src/errors.js';
import { VirtualClock } from '../../src/store/clock.js';
import type { WatchHint } from '../../src/store/contract.js';
import { openStore } from '../../src/store/open.js';
import { STORE_LIMITS } from '../../src/store/validate.js';
import { startProxy } from '../harness/proxy.js';
import { startPostgres, type ServerHandle } from '../harness/servers.js';

let server: ServerHandle;
let admin: pg.Client;
const schemas: string[] = [];
const stores: PostgresStore[] = [];

const freshSchema = (): string => {
  const s = `t_${randomBytes(5).toString('hex')}`;
  schemas.push(s);
  return s;
};

async function open(
  schema: string,
  extra: Partial<Parameters<typeof createPostgresStore>[0]> = {},
): Promise<PostgresStore> {
  const s = await createPostgresStore({ connectionString: server.url, schema, namespace: 'ns', ...extra });
  stores.push(s);
  return s;
}

async function rejection(p: Promise<unknown>): Promise<unknown> {
  return p.then(
    () => undefined,
    (e: unknown) => e,
  );
}

beforeAll(async () => {
  server = await startPostgres();
  admin = new pg.Client(server.url);
  await admin.connect();
});

afterAll(async () => {
  for (const s of stores) await s.close().catch(() => undefined);
  for (const s of schemas) await admin?.query(`DROP SCHEMA IF EXISTS "${s}" CASCADE`).catch(() => undefined);
  await admin?.end().catch(() => undefined);
  await server?.stop();
});

describe('postgres URL and options', () => {
  it('parses URLs, keeping Rebalancer parameters out of the connection string', () => {
    const p = parsePostgresUrl(
      'postgres://u:p%40ss@db.example:6543/app?sslmode=require&schema=coord&listen=false&pollIntervalMs=250',
    );
    expect(p).toEqual({
      connectionString: 'postgres://u:p%40ss@db.example:6543/app?sslmode=require',
      schema: 'coord',
      listen: false,
      pollIntervalMs: 250,
    });
    expect(parsePostgresUrl('postgresql://localhost/db').connectionString).toBe('postgresql://localhost/db');
    expect(parsePostgresUrl('postgres:///db?host=/var/run/postgresql').connectionString).toContain('host=');
  });

  it('rejects bad URLs and options with errors that show a valid form', async () => {
    for (const url of [
      'postgres:',
      'postgres://',
      'http://x/db',
      'postgres://h:99999/db',
      'postgres://h/db?listen=maybe',
      'postgres://h/db?pollIntervalMs=x',
      'postgres:db',
    ]) {
      const err = await rejection(openUrl(url));
      expect(err, url).toBeInstanceOf(InvalidArgumentError);
      expect((err as Error).message).toMatch(/postgres/);
    }
    const bad: Parameters<typeof createPostgresStore>[0][] = [
      { connectionString: server.url, schema: 'Bad-Name' },
      { connectionString: server.url, schema: '1abc' },
      { connectionString: server.url, pollIntervalMs: 1 },
      { connectionString: server.url, requestTimeoutMs: -1 },
      { connectionString: server.url, namespace: 'a/b' },
      { connectionString: server.url, listen: 'no' as unknown as boolean },
      {},
      { pool: new pg.Pool({ connectionString: server.url }), connectionString: server.url },
    ];
    for (const options of bad) {
      const err = await rejection(createPostgresStore(options));
      expect(err, JSON.stringify(options.schema ?? options.pollIntervalMs ?? options.namespace ?? null)).toBeInstanceOf(
        InvalidArgumentError,
      );
    }
  });

  it('opens through openStore with a URL, schema included', async () => {
    const schema = freshSchema();
    const s = await openStore(`${server.url}?schema=${schema}&listen=false&pollIntervalMs=100`, { namespace: 'u' });
    try {
      expect(s.backend).toBe('postgres');
      expect(s.namespace).toBe('u');
      await s.txn({ compare: [], then: [{ op: 'put', key: 'k', value: 'v' }] });
      const r = await admin.query(`SELECT count(*)::int AS n FROM "${schema}".kv WHERE ns = 'u'`);
      expect(r.rows[0]).toEqual({ n: 1 });
    } finally {
      await s.close();
    }
  });

  it('uses a caller-owned pg.Pool without ending it', async () => {
    const pool = new pg.Pool({ connectionString: server.url, max: 2 });
    try {
      const s = await createPostgresStore({ pool, schema: freshSchema() });
      await s.txn({ compare: [], then: [{ op: 'put', key: 'k', value: 'v' }] });
      await s.close();
      await s.close();
      expect((await pool.query('SELECT 1 AS one')).rows[0]).toEqual({ one: 1 });
    } finally {
      await pool.end();
    }
  });
});

describe('postgres schema', () => {
  it('creates the schema once even when many clients race to create it', async () => {
    const schema = freshSchema();
    const all = await Promise.all(Array.from({ length: 6 }, (_, i) => open(schema, { namespace: `n${i}` })));
    expect(all).toHaveLength(6);
    const v = await admin.query(`SELECT schema_version FROM "${schema}".meta`);
    expect(v.rows).toEqual([{ schema_version: POSTGRES_SCHEMA_VERSION }]);
  });

  it('refuses a schema of another version and changes nothing', async () => {
    const schema = freshSchema();
    await admin.query(`CREATE SCHEMA "${schema}"`);
    await admin.query(`CREATE TABLE "${schema}".meta (singleton boolean PRIMARY KEY, schema_version integer NOT NULL)`);
    await admin.query(`INSERT INTO "${schema}".meta VALUES (true, ${POSTGRES_SCHEMA_VERSION + 1})`);
    const err = await rejection(open(schema));
    expect(err).toBeInstanceOf(IncompatibleSchemaError);
    expect((err as IncompatibleSchemaError).found).toBe(POSTGRES_SCHEMA_VERSION + 1);
    const tables = await admin.query(`SELECT tablename FROM pg_tables WHERE schemaname = $1`, [schema]);
    expect(tables.rows).toEqual([{ tablename: 'meta' }]);
  });

  it('refuses a schema that holds tables it did not create', async () => {
    const schema = freshSchema();
    await admin.query(`CREATE SCHEMA "${schema}"`);
    await admin.query(`CREATE TABLE "${schema}".kv (x int)`);
    expect(await rejection(open(schema))).toBeInstanceOf(IncompatibleSchemaError);
    const tables = await admin.query(`SELECT tablename FROM pg_tables WHERE schemaname = $1`, [schema]);
    expect(tables.rows).toEqual([{ tablename: 'kv' }]);
  });

  it('keeps revisions growing when the schema is dropped and recreated', async () => {
    const schema = freshSchema();
    const s = await open(schema);
    const before = await s.txn({ compare: [], then: [{ op: 'put', key: 'k', value: 'v' }] });
    await admin.query(`DROP SCHEMA "${schema}" CASCADE`);
    // The first request after the loss fails (unavailable), the next recreates the schema.
    let after: number | undefined;
    for (let i = 0; i < 3 && after === undefined; i++) {
      after = await s.txn({ compare: [], then: [{ op: 'put', key: 'k', value: 'w' }] }).then(
        (r) => r.revision,
        () => undefined,
      );
    }
    expect(after).toBeGreaterThan(before.revision);
    expect((await s.get('k'))?.createRevision).toBe(after);
  });
});

describe('postgres data read back', () => {
  it('reports values that are not UTF-8 as corrupt, and does not overwrite them', async () => {
    const schema = freshSchema();
    const s = await open(schema);
    await s.txn({ compare: [], then: [{ op: 'put', key: 'bad', value: 'v' }] });
    await admin.query(`UPDATE "${schema}".kv SET value = '\\xc328'::bytea WHERE key = 'bad'::bytea`);
    expect(await rejection(s.get('bad'))).toBeInstanceOf(CorruptDataError);
    expect(await rejection(s.range(''))).toBeInstanceOf(CorruptDataError);
    expect(await rejection(s.txn({ compare: [], then: [{ op: 'put', key: 'bad', value: 'fixed' }] }))).toBeInstanceOf(
      CorruptDataError,
    );
    const raw = await admin.query(`SELECT encode(value, 'hex') AS v FROM "${schema}".kv WHERE key = 'bad'::bytea`);
    expect(raw.rows).toEqual([{ v: 'c328' }]);
  });

  it('reports malformed metadata and revisions above 2^53 as corrupt', async () => {
    const schema = freshSchema();
    const s = await open(schema);
    await s.txn({ compare: [], then: [{ op: 'put', key: 'k', value: 'v' }] });
    await admin.query(`UPDATE "${schema}".kv SET version = 0`);
    expect(await rejection(s.get('k'))).toBeInstanceOf(CorruptDataError);
    await admin.query(`UPDATE "${schema}".kv SET version = 1, mod_rev = create_rev - 1`);
    expect(await rejection(s.get('k'))).toBeInstanceOf(CorruptDataError);
    await admin.query(`UPDATE "${schema}".kv SET mod_rev = create_rev`);
    expect((await s.get('k'))?.value).toBe('v');
    await admin.query(`UPDATE "${schema}".namespaces SET revision = 9007199254740993`);
    expect(await rejection(s.range(''))).toBeInstanceOf(CorruptDataError);
    expect(await rejection(s.txn({ compare: [], then: [{ op: 'put', key: 'x', value: 'v' }] }))).toBeInstanceOf(
      CorruptDataError,
    );
    const n = await admin.query(`SELECT count(*)::int AS n FROM "${schema}".kv`);
    expect(n.rows[0]).toEqual({ n: 1 });
  });

  it('never returns a key of a session that expired on the server clock, even before the reaper ran', async () => {
    const schema = freshSchema();
    const s = await open(schema);
    const session = await s.openSession({ ttlMs: 5000 });
    await s.txn({ compare: [], then: [{ op: 'put', key: 'held', value: 'v', session }] });
    // Expire it behind the client's back, as the server's clock would.
    await admin.query(`UPDATE "${schema}".sessions SET expires_at = clock_timestamp() - interval '1 second'`);
    expect(await s.get('held')).toBeUndefined();
    expect((await s.range('')).kvs).toEqual([]);
    const ended = await session.ended;
    expect(ended.state).toBe('expired');
  });

  it('rejects oversized keys before they reach the server', async () => {
    const s = await open(freshSchema());
    expect(await rejection(s.get('k'.repeat(STORE_LIMITS.maxKeyBytes + 1)))).toBeInstanceOf(LimitExceededError);
  });
});

describe('postgres transactions', () => {
  it('answers a transaction that only reads without waiting for the writer that holds the namespace lock', async () => {
    const schema = freshSchema();
    const s = await open(schema);
    const w = await s.txn({
      compare: [],
      then: [
        { op: 'put', key: 'a/1', value: 'x' },
        { op: 'put', key: 'a/2', value: 'y' },
        { op: 'put', key: 'b', value: 'z' },
      ],
    });
    // A writer that stalls while it holds the namespace's row lock (as a paused client would).
    const holder = new pg.Client(server.url);
    await holder.connect();
    try {
      await holder.query('BEGIN');
      await holder.query(`SELECT revision FROM "${schema}".namespaces WHERE name = 'ns' FOR UPDATE`);
      let wrote = false;
      const write = s.txn({ compare: [], then: [{ op: 'put', key: 'c', value: 'later' }] }).then((r) => {
        wrote = true;
        return r;
      });
      // Awaited below; a failure before that must not surface as an unhandled rejection.
      write.catch(() => undefined);
      const r = await s.txn({
        compare: [{ key: 'b', target: 'value', op: '=', value: 'z' }],
        then: [
          { op: 'get', key: 'b' },
          { op: 'get', key: 'missing' },
          { op: 'range', prefix: 'a/' },
        ],
        else: [{ op: 'get', key: 'c' }],
      });
      expect(r.succeeded).toBe(true);
      expect(r.revision).toBe(w.revision);
      expect(r.results).toMatchObject([
        { op: 'get', key: 'b', kv: { value: 'z', version: 1, modRevision: w.revision } },
        { op: 'get', key: 'missing', kv: undefined },
        {
          op: 'range',
          prefix: 'a/',
          kvs: [
            { key: 'a/1', value: 'x' },
            { key: 'a/2', value: 'y' },
          ],
        },
      ]);
      // The failed compare runs `else`, from the same snapshot.
      const e = await s.txn({
        compare: [{ key: 'b', target: 'version', op: '>', value: 1 }],
        then: [{ op: 'range', prefix: '' }],
        else: [{ op: 'get', key: 'a/1' }],
      });
      expect(e.succeeded).toBe(false);
      expect(e.results).toMatchObject([{ op: 'get', key: 'a/1', kv: { value: 'x' } }]);
      // The writer still waits for the lock; it goes on once the lock is released.
      expect(wrote).toBe(false);
      await holder.query('COMMIT');
      expect((await write).revision).toBeGreaterThan(w.revision);
    } finally {
      await holder.end().catch(() => undefined);
    }
  });

  it('never returns a key of an expired session from a transaction that only reads; its revision covers the reap', async () => {
    const schema = freshSchema();
    const s = await open(schema);
    const session = await s.openSession({ ttlMs: 5000 });
    const w = await s.txn({
      compare: [],
      then: [
        { op: 'put', key: 'held', value: 'v', session },
        { op: 'put', key: 'free', value: 'v' },
      ],
    });
    await admin.query(`UPDATE "${schema}".sessions SET expires_at = clock_timestamp() - interval '1 second'`);
    const r = await s.txn({
      compare: [{ key: 'held', target: 'exists', exists: false }],
      then: [{ op: 'range', prefix: '' }],
    });
    expect(r.succeeded).toBe(true);
    expect(r.results).toMatchObject([{ op: 'range', prefix: '', kvs: [{ key: 'free' }] }]);
    // The reap deleted a key: a new revision, and the read's revision is at least that one.
    expect(r.revision).toBeGreaterThan(w.revision);
    expect(r.revision).toBe((await s.range('')).revision);
    expect((await session.ended).state).toBe('expired');
  });

  it('writes the puts of a branch as one statement with the versions, revisions and sessions of one at a time', async () => {
    const schema = freshSchema();
    const s = await open(schema);
    const session = await s.openSession({ ttlMs: 5000 });
    const first = await s.txn({
      compare: [],
      then: [
        { op: 'put', key: 'a', value: '1', session },
        { op: 'put', key: 'd', value: 'gone' },
        { op: 'put', key: 'p/1', value: 'gone' },
        { op: 'put', key: 'p/2', value: 'gone' },
      ],
    });
    const r = await s.txn({
      compare: [{ key: 'a', target: 'version', op: '=', value: 1 }],
      then: [
        { op: 'get', key: 'a' },
        { op: 'put', key: 'a', value: '2' },
        { op: 'delete', key: 'd' },
        { op: 'put', key: 'b', value: 'on the session', session },
        { op: 'deletePrefix', prefix: 'p/' },
        { op: 'put', key: 'c', value: 'é ☃ 𝄞' },
      ],
    });
    expect(r.succeeded).toBe(true);
    expect(r.results).toMatchObject([
      { op: 'get', key: 'a', kv: { value: '1' } },
      { op: 'put', key: 'a' },
      { op: 'delete', key: 'd', deleted: 1 },
      { op: 'put', key: 'b' },
      { op: 'deletePrefix', prefix: 'p/', deleted: 2 },
      { op: 'put', key: 'c' },
    ]);
    const kvs = (await s.range('')).kvs;
    expect(kvs.map((kv) => [kv.key, kv.value, kv.version, kv.createRevision, kv.modRevision])).toEqual([
      ['a', '2', 2, first.revision, r.revision],
      ['b', 'on the session', 1, r.revision, r.revision],
      ['c', 'é ☃ 𝄞', 1, r.revision, r.revision],
    ]);
    // `a` was put again without a session: detached. Only `b` goes with the session.
    await session.close();
    expect((await s.range('')).kvs.map((kv) => kv.key)).toEqual(['a', 'c']);
  });

  it('writes keys and values with quotes, backslashes and any Unicode as they are, and names them in NOTIFY', async () => {
    const schema = freshSchema();
    const s = await open(schema);
    const hints: WatchHint[] = [];
    const watcher = await s.watch('q/', (h) => hints.push(h));
    const key = "q/it's \\ a 'key' \\x41 $1 ; COMMIT; --";
    const value = "a 'value' \\ ; ROLLBACK; \u00e9 \u{1d11e}";
    const r = await s.txn({
      compare: [{ key, target: 'exists', exists: false }],
      then: [{ op: 'put', key, value }],
    });
    expect(r.succeeded).toBe(true);
    expect(await s.get(key)).toMatchObject({ key, value, version: 1, modRevision: r.revision });
    await vi.waitFor(() => expect(hints.some((h) => h.revision === r.revision && h.reason === 'change')).toBe(true));
    await watcher.close();
  });

  it('starts a new counter above the old revisions when the namespace row was deleted by hand', async () => {
    const schema = freshSchema();
    const s = await open(schema);
    const session = await s.openSession({ ttlMs: 5000 });
    const before = await s.txn({ compare: [], then: [{ op: 'put', key: 'k', value: '1', session }] });
    await admin.query(`DELETE FROM "${schema}".namespaces`);
    const after = await s.txn({
      compare: [{ key: 'k', target: 'modRevision', op: '=', value: before.revision }],
      then: [{ op: 'put', key: 'k', value: '2', session }],
    });
    expect(after.succeeded).toBe(true);
    expect(after.revision).toBeGreaterThan(before.revision);
    expect(await s.get('k')).toMatchObject({ value: '2', version: 2, modRevision: after.revision });
  });
});

describe('postgres restored from a backup', () => {
  /** What a restore of the whole database does to our schema: every table back to the rows of the backup. */
  async function backup(schema: string): Promise<() => Promise<void>> {
    const tables = ['namespaces', 'sessions', 'kv'];
    for (const t of tables) await admin.query(`CREATE TABLE "${schema}".bk_${t} AS SELECT * FROM "${schema}".${t}`);
    return async () => {
      await admin.query(
        `BEGIN; LOCK TABLE ${tables.map((t) => `"${schema}".${t}`).join(', ')} IN ACCESS EXCLUSIVE MODE; ` +
          `${[...tables]
            .reverse()
            .map((t) => `DELETE FROM "${schema}".${t}`)
            .join('; ')}; ` +
          `${tables.map((t) => `INSERT INTO "${schema}".${t} SELECT * FROM "${schema}".bk_${t}`).join('; ')}; COMMIT`,
      );
    };
  }

  it('ends every session of every client that saw newer data, refuses the write that found it, and waits out the delayed restart', async () => {
    const schema = freshSchema();
    const a = await open(schema, { maxSessionTtlMs: 3000 });
    const b = await open(schema, { maxSessionTtlMs: 3000 });
    const sa = await a.openSession({ ttlMs: 3000 });
    const sb = await b.openSession({ ttlMs: 3000 });
    await a.txn({ compare: [], then: [{ op: 'put', key: 'old', value: '1', session: sa }] });
    const restore = await backup(schema);
    // Written after the backup, and seen by both clients.
    const added = await b.txn({ compare: [], then: [{ op: 'put', key: 'added', value: '1', session: sb }] });
    expect((await a.get('added'))?.modRevision).toBe(added.revision);
    await restore();

    // b's next write finds the older revision under the namespace lock: refused, and nothing of it is written.
    const err = await rejection(b.txn({ compare: [], then: [{ op: 'put', key: 'late', value: '1' }] }));
    expect(err).toBeInstanceOf(StoreDataLostError);
    expect(b.dataLosses).toBe(1);
    expect(await sb.ended).toMatchObject({ state: 'expired', cause: expect.any(StoreDataLostError) });
    expect((await admin.query(`SELECT 1 FROM "${schema}".kv WHERE key = convert_to('late', 'UTF8')`)).rowCount).toBe(0);
    // The restore is marked for the others: the incarnation record is gone, and a (which did nothing since) finds
    // the loss at its next check; verifyData is that check, now.
    expect(await rejection(a.verifyData())).toBeInstanceOf(StoreDataLostError);
    expect(a.dataLosses).toBe(1);
    expect(await sa.ended).toMatchObject({ state: 'expired', cause: expect.any(StoreDataLostError) });
    // No session until every lease from before could have ended.
    expect(await rejection(b.openSession({ ttlMs: 3000 }))).toBeInstanceOf(StoreRecoveringError);
    expect(await rejection(a.openSession({ ttlMs: 3000 }))).toBeInstanceOf(StoreRecoveringError);
    // Counted once each, and work goes on from the restored data afterwards.
    await a.txn({ compare: [], then: [{ op: 'put', key: 'after', value: '1' }] });
    expect(await b.get('after')).toMatchObject({ value: '1' });
    expect([a.dataLosses, b.dataLosses]).toEqual([1, 1]);
  });

  it('a read that sees the older revision ends the sessions too; writes and reads that race never do', async () => {
    const schema = freshSchema();
    const a = await open(schema, { maxSessionTtlMs: 3000 });
    const b = await open(schema, { maxSessionTtlMs: 3000 });
    // Many concurrent writes and reads from two clients: revisions only grow, no loss is seen.
    await Promise.all(
      Array.from({ length: 60 }, (_, i) =>
        i % 2 === 0
          ? (i % 4 === 0 ? a : b).txn({ compare: [], then: [{ op: 'put', key: `k${i % 7}`, value: String(i) }] })
          : (i % 3 === 0 ? a : b).range('k'),
      ),
    );
    expect([a.dataLosses, b.dataLosses]).toEqual([0, 0]);
    const session = await a.openSession({ ttlMs: 3000 });
    const restore = await backup(schema);
    await a.txn({ compare: [], then: [{ op: 'put', key: 'added', value: '1' }] });
    await restore();
    expect(await rejection(a.range('k'))).toBeInstanceOf(StoreDataLostError);
    expect(await session.ended).toMatchObject({ state: 'expired', cause: expect.any(StoreDataLostError) });
    expect(a.dataLosses).toBe(1);
    // The read marks the restore for the other clients: the incarnation record goes (b's next check finds it).
    await vi.waitFor(
      async () =>
        expect(
          (await admin.query(`SELECT 1 FROM "${schema}".kv WHERE key = convert_to('.rebalancer/incarnation', 'UTF8')`))
            .rowCount,
        ).toBe(0),
      { timeout: 5000 },
    );
  });
});

describe('postgres watches', () => {
  it('delivers hints by polling alone with listen: false', async () => {
    const schema = freshSchema();
    const s = await open(schema, { listen: false, pollIntervalMs: 50 });
    const hints: WatchHint[] = [];
    const w = await s.watch('p/', (h) => hints.push(h));
    const r = await s.txn({ compare: [], then: [{ op: 'put', key: 'p/1', value: 'v' }] });
    const deadline = Date.now() + 3000;
    while (!hints.some((h) => h.revision >= r.revision) && Date.now() < deadline)
      await new Promise((x) => setTimeout(x, 20));
    expect(hints.some((h) => h.revision >= r.revision && h.reason === 'change')).toBe(true);
    await w.close();
  });

  it('hints only watchers whose prefix a change may touch', () => {
    const n = decodeNotice(encodeNotice('ns', 7, ['a/1', 'a/2']));
    expect(n).toEqual({ ns: 'ns', rev: 7, keys: ['a/1', 'a/2'] });
    expect(noticeMatches(n!, 'a/')).toBe(true);
    expect(noticeMatches(n!, 'b/')).toBe(false);
    expect(noticeMatches(n!, '')).toBe(true);
    // Too many keys for one payload: fall back to their common prefix (spurious hints allowed, missing ones not).
    const many = Array.from({ length: 100 }, (_, i) => `group/${'x'.repeat(100)}/${i}`);
    const big = decodeNotice(encodeNotice('ns', 8, many));
    expect(big?.keys).toBeUndefined();
    expect(noticeMatches(big!, 'group/')).toBe(true);
    expect(noticeMatches(big!, `group/${'x'.repeat(100)}/5`)).toBe(true);
    expect(noticeMatches(big!, 'other/')).toBe(false);
    expect(decodeNotice('not json')).toBeUndefined();
    expect(decodeNotice('{"ns":"a","rev":1e300}')).toBeUndefined();
  });

  it('scans exact byte ranges for prefixes', () => {
    expect(prefixRange('')).toEqual([Buffer.alloc(0), null]);
    expect(prefixRange('a/')).toEqual([Buffer.from('a/'), Buffer.from('a0')]);
    const [low, high] = prefixRange('é');
    expect(low).toEqual(Buffer.from([0xc3, 0xa9]));
    expect(high).toEqual(Buffer.from([0xc3, 0xaa]));
  });
});

describe('postgres timers', () => {
  it('times a request out when the injected clock says so, not by real time', async () => {
    const proxy = await startProxy({ host: '127.0.0.1', port: server.port });
    const clock = new VirtualClock();
    const s = await open(freshSchema(), {
      connectionString: server.url.replace(`:${server.port}/`, `:${proxy.port}/`),
      clock,
      requestTimeoutMs: 300,
      listen: false,
    });
    try {
      proxy.setMode('blackhole');
      const outcome = rejection(s.get('k'));
      let settled = false;
      void outcome.then(() => (settled = true));
      await new Promise((r) => setTimeout(r, 800));
      expect(settled).toBe(false);
      await clock.runFor(300);
      expect(await outcome).toBeInstanceOf(StoreUnavailableError);
    } finally {
      proxy.setMode('pass');
      proxy.resetAll();
      await proxy.close();
    }
  });
});

describe('postgres close', () => {
  const FIXTURE = fileURLToPath(new URL('./fixtures/postgres-exit.ts', import.meta.url));

  /** Run the fixture; `beforeClose` runs once it is ready. Resolves with its exit code and stdout lines. */
  async function runFixture(url: string, beforeClose: () => void): Promise<{ code: number | null; lines: string[] }> {
    const child = spawn(process.execPath, ['--import', 'tsx', FIXTURE, url, freshSchema()], {
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    const lines: string[] = [];
    const killer = setTimeout(() => child.kill('SIGKILL'), 20_000);
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    createInterface({ input: child.stdout }).on('line', (line) => {
      lines.push(line);
      if (line === 'ready') {
        beforeClose();
        child.stdin.end('close\n');
      }
    });
    const code = await exited;
    clearTimeout(killer);
    return { code, lines };
  }

  it('leaves nothing that keeps the process alive', async () => {
    const r = await runFixture(server.url, () => undefined);
    expect(r).toEqual({ code: 0, lines: ['ready', 'closed'] });
  }, 30_000);

  it('closes and lets the process exit even when the server has gone silent', async () => {
    const proxy = await startProxy({ host: '127.0.0.1', port: server.port });
    try {
      const url = server.url.replace(`:${server.port}/`, `:${proxy.port}/`);
      const r = await runFixture(url, () => proxy.setMode('blackhole'));
      expect(r).toEqual({ code: 0, lines: ['ready', 'closed'] });
    } finally {
      await proxy.close();
    }
  }, 30_000);
});
