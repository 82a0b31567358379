/**
 * Redis-specific behaviour: URL and option parsing, data Rebalancer did not
 * write, layout versions, the reaping bound, lost data, failing fast.
 */
import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRedisStore, openUrl, parseRedisUrl, type RedisStore } from '../../src/backends/redis/index.js';
import {
  CorruptDataError,
  IncompatibleSchemaError,
  InvalidArgumentError,
  LimitExceededError,
  SessionExpiredError,
  StoreUnavailableError,
} from '../../src/errors.js';
import { openStore } from '../../src/store/open.js';
import type { Session, WatchHint } from '../../src/store/contract.js';
import { STORE_LIMITS } from '../../src/store/validate.js';
import { startRedis, type ServerHandle } from '../harness/servers.js';
import { eventually, sleep } from '../harness/wait.js';

const fresh = (): string => `t${randomBytes(5).toString('hex')}`;
const errorOf = (p: Promise<unknown>): Promise<unknown> =>
  p.then(
    () => undefined,
    (e: unknown) => e,
  );

describe('redis URLs and options', () => {
  it('parses redis:// and rediss:// URLs', () => {
    expect(parseRedisUrl('redis://127.0.0.1:6380')).toEqual({ host: '127.0.0.1', port: 6380 });
    expect(parseRedisUrl('redis://localhost')).toEqual({ host: 'localhost', port: 6379 });
    expect(parseRedisUrl('redis://:s%40cret@h:1/3')).toEqual({ host: 'h', port: 1, password: 's@cret', db: 3 });
    expect(parseRedisUrl('redis://app:pw@h/')).toEqual({ host: 'h', port: 6379, username: 'app', password: 'pw' });
    expect(parseRedisUrl('rediss://redis.example.com:6380')).toEqual({
      host: 'redis.example.com',
      port: 6380,
      tls: { servername: 'redis.example.com' },
    });
    expect(parseRedisUrl('rediss://10.0.0.1')).toEqual({ host: '10.0.0.1', port: 6379, tls: {} });
    expect(parseRedisUrl('redis://[::1]:7000')).toEqual({ host: '::1', port: 7000 });
  });

  it('rejects malformed URLs with an example of a valid one', () => {
    for (const bad of [
      '',
      'redis://',
      'http://h:1',
      'redis://h:1/x',
      'redis://h:1/0?tls=1',
      'redis://h:99999',
      'redis:/h',
      'not a url',
    ]) {
      const err = (() => {
        try {
          parseRedisUrl(bad);
          return undefined;
        } catch (e) {
          return e;
        }
      })();
      expect(err, bad).toBeInstanceOf(InvalidArgumentError);
      expect((err as Error).message).toContain('redis://');
    }
    // Passwords never appear in messages.
    const err = (() => {
      try {
        parseRedisUrl('redis://u:topsecret@h:1/x');
        return undefined;
      } catch (e) {
        return e as Error;
      }
    })();
    expect(err?.message).not.toContain('topsecret');
  });

  it('refuses options that would make requests hang, be resent, or escape the namespace', async () => {
    for (const redis of [
      { keyPrefix: 'x:' },
      { enableOfflineQueue: true },
      { maxRetriesPerRequest: null },
      { commandTimeout: 1 },
    ]) {
      expect(await errorOf(createRedisStore({ redis }))).toBeInstanceOf(InvalidArgumentError);
    }
    expect(await errorOf(createRedisStore({ namespace: 'bad ns' }))).toBeInstanceOf(InvalidArgumentError);
    expect(await errorOf(createRedisStore({ requestTimeoutMs: -1 }))).toBeInstanceOf(InvalidArgumentError);
    expect(await errorOf(openStore('redis://h:1/x'))).toBeInstanceOf(InvalidArgumentError);
  });
});

describe('redis store on a private server', () => {
  let server: ServerHandle;
  let raw: Redis;
  const stores: RedisStore[] = [];
  const open = async (
    namespace: string,
    extra: Partial<Parameters<typeof createRedisStore>[0]> = {},
  ): Promise<RedisStore> => {
    const s = await createRedisStore({ url: server.url, namespace, ...extra });
    stores.push(s);
    return s;
  };

  beforeAll(async () => {
    server = await startRedis();
    raw = new Redis(server.port, '127.0.0.1', { lazyConnect: true });
    await raw.connect();
  });

  afterAll(async () => {
    for (const s of stores) await s.close().catch(() => undefined);
    raw?.disconnect();
    await server?.stop();
  });

  it('fails fast with StoreUnavailableError when nothing listens', async () => {
    const started = Date.now();
    const err = await errorOf(createRedisStore({ url: 'redis://127.0.0.1:1', requestTimeoutMs: 3000 }));
    expect(err).toBeInstanceOf(StoreUnavailableError);
    expect((err as StoreUnavailableError).outcome).toBe('not-applied');
    expect(Date.now() - started).toBeLessThan(3500);
  });

  describe('the database a URL selects', () => {
    it('refuses a database the server does not have, naming it and the server’s count, and writes nothing', async () => {
      const ns = fresh();
      for (const open of [
        () => createRedisStore({ url: `${server.url}/99`, namespace: ns }),
        () => openStore(`${server.url}/16`, { namespace: ns }),
        () => createRedisStore({ url: server.url, namespace: ns, redis: { db: 40 } }),
      ]) {
        const err = await errorOf(open());
        expect(err).toBeInstanceOf(InvalidArgumentError);
        const message = (err as Error).message;
        expect(message).toContain(`Redis at 127.0.0.1:${server.port} has 16 databases (0 to 15)`);
        expect(message).toMatch(/database (99|16|40) does not exist; use a database number below 16/);
      }
      // Nothing landed in database 0 (another tenant's) either.
      expect(await raw.keys(`*${ns}*`)).toEqual([]);
    });

    it('reads and writes only the selected database', async () => {
      const ns = fresh();
      const s = await open(ns, { url: `${server.url}/3` });
      await s.txn({ compare: [], then: [{ op: 'put', key: 'k', value: 'v' }] });
      expect(await raw.keys(`*${ns}*`)).toEqual([]);
      const db3 = new Redis(server.port, '127.0.0.1', { db: 3, lazyConnect: true });
      await db3.connect();
      try {
        expect((await db3.keys(`*${ns}*`)).length).toBeGreaterThan(0);
      } finally {
        db3.disconnect();
      }
    });

    it('never uses a reconnected connection that could not select the database again', async () => {
      // A user that may select databases, then may not: every reconnect's SELECT now fails.
      const user = `u${fresh()}`;
      await raw.call('ACL', 'SETUSER', user, 'on', '>pw', '~*', '&*', '+@all');
      const ns = fresh();
      const s = await open(ns, { url: `redis://${user}:pw@127.0.0.1:${server.port}/5`, requestTimeoutMs: 1000 });
      await s.txn({ compare: [], then: [{ op: 'put', key: 'before', value: '1' }] });
      await raw.call('ACL', 'SETUSER', user, '-select');
      await raw.call('CLIENT', 'KILL', 'USER', user);
      await eventually(
        async () => {
          const err = await errorOf(s.txn({ compare: [], then: [{ op: 'put', key: 'during', value: '1' }] }));
          return (
            err instanceof StoreUnavailableError && err.message.includes('does not let this user select database 5')
          );
        },
        { what: 'requests refused once the user may not select database 5', timeoutMs: 10_000 },
      );
      // Not one request ran in database 0.
      expect(await raw.keys(`*${ns}*`)).toEqual([]);
      await raw.call('ACL', 'SETUSER', user, '+select');
      await eventually(
        async () => {
          const err = await errorOf(s.txn({ compare: [], then: [{ op: 'put', key: 'after', value: '1' }] }));
          return err === undefined;
        },
        { what: 'requests served again once the user may select database 5', timeoutMs: 10_000 },
      );
      expect((await s.range('')).kvs.map((kv) => kv.key)).toEqual(['after', 'before']);
      expect(await raw.keys(`*${ns}*`)).toEqual([]);
      await raw.call('ACL', 'DELUSER', user);
    });
  });

  it('opens from a URL through openStore', async () => {
    const s = await openStore(server.url, { namespace: fresh() });
    try {
      expect(s.backend).toBe('redis');
      await s.txn({ compare: [], then: [{ op: 'put', key: 'k', value: 'v' }] });
      expect((await s.get('k'))?.value).toBe('v');
    } finally {
      await s.close();
      await s.close();
    }
    expect(await errorOf(s.get('k'))).toMatchObject({ code: 'CLOSED' });
  });

  it('keeps every key of a namespace under one hash tag', async () => {
    const ns = fresh();
    const s = await open(ns);
    const session = await s.openSession({ ttlMs: 5000 });
    await s.txn({ compare: [], then: [{ op: 'put', key: 'a{b}c', value: '1', session }] });
    const keys = await raw.keys(`*${ns}*`);
    expect(keys.length).toBeGreaterThanOrEqual(5);
    for (const k of keys) expect(k.startsWith(`rb:{${ns}}:`)).toBe(true);
    await session.close();
  });

  it('reports a value that is not UTF-8 as CorruptDataError naming the key, and never overwrites it', async () => {
    const ns = fresh();
    const s = await open(ns);
    const base = `rb:{${ns}}:`;
    await raw.hset(`${base}k:bad`, 'value', Buffer.from([0x61, 0xff, 0xfe]), 'version', '1', 'crev', '5', 'mrev', '5');
    await raw.zadd(`${base}idx`, 0, 'bad');
    const g = await errorOf(s.get('bad'));
    expect(g).toBeInstanceOf(CorruptDataError);
    expect((g as CorruptDataError).key).toBe('bad');
    expect(await errorOf(s.range(''))).toBeInstanceOf(CorruptDataError);
    for (const txn of [
      { compare: [], then: [{ op: 'put' as const, key: 'bad', value: 'clean' }] },
      {
        compare: [{ key: 'bad', target: 'exists' as const, exists: true }],
        then: [{ op: 'put' as const, key: 'other', value: '1' }],
      },
      { compare: [], then: [{ op: 'deletePrefix' as const, prefix: 'b' }] },
    ]) {
      const e = await errorOf(s.txn(txn));
      expect(e).toBeInstanceOf(CorruptDataError);
      expect((e as CorruptDataError).key).toBe('bad');
    }
    expect((await raw.hgetBuffer(`${base}k:bad`, 'value'))?.equals(Buffer.from([0x61, 0xff, 0xfe]))).toBe(true);
    expect(await raw.exists(`${base}k:other`)).toBe(0);
  });

  it('checks UTF-8 in scripts exactly as strictly as the client decodes it', async () => {
    const ns = fresh();
    const s = await open(ns);
    const base = `rb:{${ns}}:`;
    const decoder = new TextDecoder('utf-8', { fatal: true });
    const interesting = [0x00, 0x41, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xc1, 0xc2, 0xdf, 0xe0, 0xe1];
    interesting.push(0xec, 0xed, 0xee, 0xef, 0xf0, 0xf1, 0xf3, 0xf4, 0xf5, 0xff);
    let seed = 42;
    const rand = (n: number): number => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    let invalid = 0;
    for (let i = 0; i < 400; i++) {
      const parts: number[] = [];
      for (let j = rand(6) + 1; j > 0; j--) {
        if (rand(3) === 0) parts.push(...Buffer.from(['é', '€', '😀', 'a', '\uffff', '\ud7ff'][rand(6)]!));
        else parts.push(interesting[rand(interesting.length)]!);
      }
      const bytes = Buffer.from(parts);
      let valid = true;
      try {
        decoder.decode(bytes);
      } catch {
        valid = false;
        invalid++;
      }
      await raw.hset(`${base}k:u`, 'value', bytes, 'version', '1', 'crev', '5', 'mrev', '5');
      const e = await errorOf(s.txn({ compare: [{ key: 'u', target: 'exists', exists: true }], then: [] }));
      expect({ bytes: bytes.toString('hex'), refused: e instanceof CorruptDataError }).toEqual({
        bytes: bytes.toString('hex'),
        refused: !valid,
      });
    }
    expect(invalid).toBeGreaterThan(50);
    expect(invalid).toBeLessThan(390);
  });

  it('reports malformed metadata as CorruptDataError naming the key', async () => {
    const ns = fresh();
    const s = await open(ns);
    const base = `rb:{${ns}}:`;
    await raw.hset(`${base}k:v`, 'value', 'x', 'version', 'abc', 'crev', '5', 'mrev', '5');
    await raw.hset(`${base}k:nover`, 'value', 'x', 'crev', '5', 'mrev', '5');
    await raw.hset(`${base}k:order`, 'value', 'x', 'version', '1', 'crev', '9', 'mrev', '5');
    await raw.set(`${base}k:str`, 'not a hash');
    await raw.hset(`${base}k:foreign`, 'color', 'blue');
    for (const key of ['v', 'nover', 'order', 'str', 'foreign']) {
      const e = await errorOf(s.get(key));
      expect(e, key).toBeInstanceOf(CorruptDataError);
      expect((e as CorruptDataError).key).toBe(key);
      const t = await errorOf(s.txn({ compare: [], then: [{ op: 'put', key, value: 'y' }] }));
      expect(t, key).toBeInstanceOf(CorruptDataError);
    }
    expect(await raw.hget(`${base}k:v`, 'version')).toBe('abc');
    expect(await raw.get(`${base}k:str`)).toBe('not a hash');
    // An index entry without data.
    await raw.zadd(`${base}idx`, 0, 'ghost');
    expect(await errorOf(s.range('gh'))).toBeInstanceOf(CorruptDataError);
    // A revision counter that is not a number.
    const ns2 = fresh();
    const s2 = await open(ns2);
    await raw.set(`rb:{${ns2}}:rev`, 'twelve');
    expect(await errorOf(s2.get('x'))).toBeInstanceOf(CorruptDataError);
  });

  it('a junk revision counter: sessions are kept, every other call names it, repairRevision() sets it above all', async () => {
    const ns = fresh();
    const s = await open(ns);
    const session = await s.openSession({ ttlMs: 1000 });
    const w = await s.txn({ compare: [], then: [{ op: 'put', key: 'lock', value: 'mine', session }] });
    const rev = s.layout.revision;
    await raw.set(rev, 'junk');
    // Past the TTL: the keep-alive needs no revision, so the session and its key are still there.
    await sleep(2500);
    expect(session.state === 'live' || session.state === 'suspect').toBe(true);
    const e = await errorOf(s.get('lock'));
    expect(e).toBeInstanceOf(CorruptDataError);
    expect((e as CorruptDataError).key).toBe(rev);
    expect((e as CorruptDataError).message).toMatch(/rebalancer store repair-revision/);
    expect(await raw.get(rev)).toBe('junk');
    // A new client opens anyway (an operator's tool must), and repairs it.
    const s2 = await open(ns);
    const fixed = await s2.repairRevision();
    expect(fixed).toMatchObject({ repaired: true, previous: 'junk' });
    expect(fixed.revision).toBeGreaterThan(w.revision);
    expect((await s.get('lock'))?.sessionId).toBe(session.id);
    const w2 = await s.txn({ compare: [], then: [{ op: 'put', key: 'other', value: 'x' }] });
    expect(w2.revision).toBeGreaterThan(fixed.revision);
    expect(await s2.repairRevision()).toEqual({ repaired: false, revision: w2.revision });
    // Another Redis type in its place: the same.
    await raw.del(rev);
    await raw.lpush(rev, '1');
    expect((await errorOf(s.get('lock'))) as CorruptDataError).toMatchObject({ key: rev });
    const again = await s2.repairRevision();
    expect(again).toMatchObject({ repaired: true, previous: '<list>' });
    expect(again.revision).toBeGreaterThan(w2.revision);
    await session.close();
  });

  it('refuses a namespace with an unknown layout version and changes nothing', async () => {
    const ns = fresh();
    const base = `rb:{${ns}}:`;
    await raw.set(`${base}schema`, '2');
    const e = await errorOf(createRedisStore({ url: server.url, namespace: ns }));
    expect(e).toBeInstanceOf(IncompatibleSchemaError);
    expect((e as IncompatibleSchemaError).found).toBe(2);
    expect(await raw.keys(`${base}*`)).toEqual([`${base}schema`]);
    // A store opened before the layout changed refuses too, on every call.
    const ns2 = fresh();
    const s = await open(ns2);
    await s.txn({ compare: [], then: [{ op: 'put', key: 'k', value: 'v' }] });
    const before = await raw.get(`rb:{${ns2}}:rev`);
    await raw.set(`rb:{${ns2}}:schema`, '7');
    expect(await errorOf(s.get('k'))).toBeInstanceOf(IncompatibleSchemaError);
    expect(await errorOf(s.txn({ compare: [], then: [{ op: 'put', key: 'k', value: 'w' }] }))).toBeInstanceOf(
      IncompatibleSchemaError,
    );
    expect(await errorOf(s.openSession({ ttlMs: 1000 }))).toBeInstanceOf(IncompatibleSchemaError);
    expect(await raw.get(`rb:{${ns2}}:rev`)).toBe(before);
    expect(await raw.hget(`rb:{${ns2}}:k:k`, 'value')).toBe('v');
    await raw.set(`rb:{${ns2}}:schema`, 'one');
    expect(await errorOf(s.get('k'))).toBeInstanceOf(CorruptDataError);
  });

  it('enforces the contract limits', async () => {
    const s = await open(fresh());
    // The contract's limits, with this namespace's longest session TTL (docs/adr/0009).
    expect(s.limits).toEqual({ ...STORE_LIMITS, maxSessionTtlMs: 30_000 });
    expect(
      await errorOf(
        s.txn({ compare: [], then: [{ op: 'put', key: 'k', value: 'v'.repeat(STORE_LIMITS.maxValueBytes + 1) }] }),
      ),
    ).toBeInstanceOf(LimitExceededError);
    // A full-size transaction goes through in one script.
    const then = Array.from({ length: STORE_LIMITS.maxTxnOps }, (_, i) => ({
      op: 'put' as const,
      key: `k/${i}`,
      value: 'x'.repeat(1000),
    }));
    const r = await s.txn({ compare: [], then });
    expect(r.succeeded).toBe(true);
    expect((await s.range('k/')).kvs).toHaveLength(STORE_LIMITS.maxTxnOps);
  });

  it("hides the keys of every expired session at once, even beyond one call's reaping bound", async () => {
    const ns = fresh();
    const s = await open(ns, { maintenanceIntervalMs: 60_000 });
    const writer = await open(ns, { maintenanceIntervalMs: 60_000 });
    const sessions = await Promise.all(Array.from({ length: 40 }, () => writer.openSession({ ttlMs: 1000 })));
    for (const [i, session] of sessions.entries()) {
      await writer.txn({
        compare: [],
        then: [{ op: 'put', key: `s/${String(i).padStart(2, '0')}`, value: 'x', session }],
      });
    }
    expect((await s.range('s/')).kvs).toHaveLength(40);
    // Stop keeping them alive without revoking (the process "died").
    for (const session of sessions) (session as unknown as { abandon(): void }).abandon();
    await sleep(1200);
    // 40 sessions > 16 reaped per call: the reads must still show none of their keys.
    expect((await s.range('s/')).kvs).toEqual([]);
    expect(await s.get('s/39')).toBeUndefined();
    // A put over a hidden key starts a new key.
    const r = await s.txn({
      compare: [{ key: 's/39', target: 'exists', exists: false }],
      then: [{ op: 'put', key: 's/39', value: 'new' }],
    });
    expect(r.succeeded).toBe(true);
    expect(await s.get('s/39')).toMatchObject({
      value: 'new',
      version: 1,
      createRevision: r.revision,
      sessionId: undefined,
    });
    // Later calls finish the reaping, and the re-created key survives it.
    for (let i = 0; i < 5; i++) await s.get('x');
    expect(await raw.zcard(`rb:{${ns}}:sess`)).toBe(0);
    expect((await s.range('s/')).kvs.map((kv) => kv.key)).toEqual(['s/39']);
  });

  it('tells a session it expired when its server lost the data, and keeps revisions growing', async () => {
    const own = await startRedis({ appendOnly: false });
    try {
      const ns = fresh();
      const s = await createRedisStore({ url: own.url, namespace: ns, requestTimeoutMs: 1000, maxSessionTtlMs: 2000 });
      try {
        // A server that keeps no data and started moments ago may have just lost some: the first session waits out
        // the delayed restart too (docs/adr/0009).
        const granted = (): Promise<Session> =>
          eventually(() => s.openSession({ ttlMs: 2000 }).catch(() => false as const), {
            what: 'a session once the delayed restart is over',
            timeoutMs: 5000,
            intervalMs: 100,
          });
        const session = await granted();
        const before = await s.txn({ compare: [], then: [{ op: 'put', key: 'held', value: 'x', session }] });
        await own.kill();
        await own.restart();
        await eventually(() => session.state === 'expired', {
          what: 'the session to be reported expired',
          timeoutMs: 5000,
        });
        expect(
          await errorOf(s.txn({ compare: [], then: [{ op: 'put', key: 'k', value: 'v', session }] })),
        ).toBeInstanceOf(SessionExpiredError);
        expect(await s.get('held')).toBeUndefined();
        const after = await s.txn({ compare: [], then: [{ op: 'put', key: 'k', value: 'v' }] });
        expect(after.revision).toBeGreaterThan(before.revision);
        // No session until every lease from before has surely ended (docs/adr/0009): the store says so, typed.
        expect(await errorOf(s.openSession({ ttlMs: 2000 }))).toMatchObject({
          code: expect.stringMatching(/^(DATA_LOST|STORE_RECOVERING)$/),
        });
        const again = await granted();
        expect(Number(again.id)).toBeGreaterThan(Number(session.id));
        await again.close();
      } finally {
        await s.close();
      }
    } finally {
      await own.stop();
    }
  });

  it('fails fast while the server is down, then recovers', async () => {
    const own = await startRedis({ appendOnly: false });
    try {
      const s = await createRedisStore({ url: own.url, namespace: fresh(), requestTimeoutMs: 3000 });
      try {
        await s.txn({ compare: [], then: [{ op: 'put', key: 'k', value: 'v' }] });
        await own.kill();
        await sleep(100);
        const started = Date.now();
        const err = await errorOf(s.get('k'));
        expect(err).toBeInstanceOf(StoreUnavailableError);
        expect((err as StoreUnavailableError).outcome).toBe('not-applied');
        expect(Date.now() - started).toBeLessThan(1000);
        await own.restart();
        await eventually(async () => (await s.get('k').catch(() => 'err')) === undefined, {
          what: 'reads to work again after the restart',
          timeoutMs: 10_000,
          intervalMs: 100,
        });
      } finally {
        await s.close();
      }
    } finally {
      await own.stop();
    }
  });

  it('authenticates with a password from the URL, and refuses wrong credentials clearly', async () => {
    const ns = fresh();
    await raw.config('SET', 'requirepass', 'p@ss word');
    try {
      const url = `redis://:${encodeURIComponent('p@ss word')}@127.0.0.1:${server.port}`;
      const s = await openUrl(url, { namespace: ns });
      await s.txn({ compare: [], then: [{ op: 'put', key: 'k', value: 'v' }] });
      await s.close();
      const err = await errorOf(
        openUrl(`redis://:wrong@127.0.0.1:${server.port}`, { namespace: ns, requestTimeoutMs: 2000 }),
      );
      expect(err).toBeInstanceOf(InvalidArgumentError);
      expect((err as Error).message).not.toContain('wrong');
    } finally {
      await raw.config('SET', 'requirepass', '');
    }
  });

  it('works as a least-privilege ACL user confined to its namespace', async () => {
    const ns = fresh();
    const rules = `~rb:{${ns}}:* resetchannels &rb:{${ns}}:events +@scripting +@pubsub +@read +@write +@connection +info +time`;
    await raw.call('ACL', 'SETUSER', `u${ns}`, 'on', '>pw', 'resetkeys', ...rules.split(' '));
    const s = await open(ns, { url: `redis://u${ns}:pw@127.0.0.1:${server.port}` });
    const session = await s.openSession({ ttlMs: 1000 });
    const hints: number[] = [];
    await s.watch('', (h) => hints.push(h.revision));
    const r = await s.txn({ compare: [], then: [{ op: 'put', key: 'a', value: '1', session }] });
    expect((await s.range('')).kvs.map((kv) => kv.key)).toEqual(['a']);
    await session.close();
    expect(await s.get('a')).toBeUndefined();
    await eventually(() => hints.some((h) => h > r.revision), { what: 'a hint of the session close', timeoutMs: 2000 });
    // The same user cannot open another namespace.
    expect(
      await errorOf(createRedisStore({ url: `redis://u${ns}:pw@127.0.0.1:${server.port}`, namespace: fresh() })),
    ).toBeInstanceOf(StoreUnavailableError);
  });

  it('makes up for a lost change notification with the revision poll', async () => {
    const ns = fresh();
    const s = await open(ns);
    const hints: WatchHint[] = [];
    await s.watch('p/', (h) => hints.push(h));
    await s.txn({ compare: [], then: [{ op: 'put', key: 'p/a', value: '1' }] });
    await eventually(() => hints.length > 0, { what: 'a hint of the put', timeoutMs: 2000 });
    const n = hints.length;
    // A change whose notification never arrives: the counter moves, nothing is published.
    await raw.incr(`rb:{${ns}}:rev`);
    const bumped = Number(await raw.get(`rb:{${ns}}:rev`));
    await eventually(() => hints.slice(n).some((h) => h.revision >= bumped), {
      what: 'a hint from the revision poll',
      timeoutMs: 2000,
    });
    expect(hints.slice(n).every((h) => h.reason === 'change')).toBe(true);
  });

  it('re-subscribes after losing its subscriber connection, and says resync', async () => {
    const ns = fresh();
    const s = await open(ns);
    const hints: WatchHint[] = [];
    await s.watch('', (h) => hints.push(h));
    await raw.call('CLIENT', 'KILL', 'TYPE', 'pubsub');
    await eventually(() => hints.some((h) => h.reason === 'resync'), { what: 'a resync hint', timeoutMs: 5000 });
    const r = await s.txn({ compare: [], then: [{ op: 'put', key: 'after', value: '1' }] });
    await eventually(() => hints.some((h) => h.reason === 'change' && h.revision >= r.revision), {
      what: 'a change hint after re-subscribing',
      timeoutMs: 2000,
    });
  });
});
