/**
 * ZooKeeper-specific behaviour: URL parsing, the znode layout and its
 * escaping, data written by someone else (corrupt envelopes, foreign znodes,
 * unknown layout versions), the rev znode's rollover, session timeouts
 * against the server's tickTime, and clean shutdown.
 */
import { randomBytes } from 'node:crypto';
import fc from 'fast-check';
import zookeeper, { type Client, type Stat } from 'node-zookeeper-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ZookeeperStore,
  createZookeeperStore,
  openUrl,
  parseZookeeperUrl,
  type ZookeeperStoreOptions,
} from '../../src/backends/zookeeper/index.js';
import { escapeName, parseLeafName, unescapeName, leafName } from '../../src/backends/zookeeper/layout.js';
import {
  CorruptDataError,
  IncompatibleSchemaError,
  InvalidArgumentError,
  LimitExceededError,
} from '../../src/errors.js';
import { openStore } from '../../src/store/open.js';
import { STORE_LIMITS } from '../../src/store/validate.js';
import { startZookeeper, type ServerHandle } from '../harness/servers.js';

function cb<T>(f: (done: (e: unknown, v: T) => void) => void): Promise<T> {
  return new Promise((resolve, reject) => f((e, v) => (e ? reject(e as Error) : resolve(v))));
}

/** Raw access for planting data Rebalancer did not write. */
class Raw {
  constructor(readonly client: Client) {}
  static async connect(port: number): Promise<Raw> {
    const client = zookeeper.createClient(`127.0.0.1:${port}`, { sessionTimeout: 5000 });
    const connected = new Promise<void>((r) => client.once('connected', () => r()));
    client.connect();
    await connected;
    return new Raw(client);
  }
  getData(path: string): Promise<Buffer> {
    return cb<Buffer>((d) => this.client.getData(path, (e, data) => d(e, data)));
  }
  setData(path: string, data: Buffer): Promise<Stat> {
    return cb<Stat>((d) => this.client.setData(path, data, -1, (e, s) => d(e, s)));
  }
  create(path: string, data: Buffer): Promise<string> {
    return cb<string>((d) => this.client.create(path, data, (e, p) => d(e, p)));
  }
  children(path: string): Promise<string[]> {
    return cb<string[]>((d) => this.client.getChildren(path, (e, c) => d(e, c)));
  }
  exists(path: string): Promise<Stat | null> {
    return cb<Stat | null>((d) => this.client.exists(path, (e, s) => d(e, s)));
  }
  close(): void {
    this.client.close();
  }
}

describe('zookeeper URL', () => {
  it('parses hosts, default port, chroot and credentials', () => {
    expect(parseZookeeperUrl('zk://127.0.0.1:2181')).toEqual({
      connectString: '127.0.0.1:2181',
      chroot: undefined,
      digest: undefined,
    });
    expect(parseZookeeperUrl('zookeeper://a:1,b,c.example.com:3/app/x/')).toEqual({
      connectString: 'a:1,b:2181,c.example.com:3',
      chroot: '/app/x',
      digest: undefined,
    });
    expect(parseZookeeperUrl('zk://us%40er:p%3Ass@h:2181/')).toEqual({
      connectString: 'h:2181',
      chroot: undefined,
      digest: 'us@er:p:ss',
    });
  });

  it('rejects bad URLs with a message that shows a valid one', async () => {
    for (const bad of [
      'zk://',
      'zk:///chroot',
      'zk://h:0',
      'zk://h:99999',
      'zk://[::1]:2181',
      'zk://h:2181/a//b',
      'zk://h:2181/a/../b',
      'zk://h:2181/zookeeper/x',
      'zk://h:2181?x=1',
      'zk://user@h:2181',
      'redis://h:1',
    ]) {
      const err = (() => {
        try {
          parseZookeeperUrl(bad);
          return undefined;
        } catch (e) {
          return e;
        }
      })();
      expect(err, bad).toBeInstanceOf(InvalidArgumentError);
    }
    await expect(openUrl('zk://h:99999')).rejects.toThrow(/zk:\/\/.*host:port/);
  });

  it('rejects bad options before connecting', async () => {
    const base: ZookeeperStoreOptions = { connectString: '127.0.0.1:1' };
    const bad: ZookeeperStoreOptions[] = [
      { ...base, connectString: '127.0.0.1:1/chroot' },
      { ...base, rootPath: 'relative' },
      { ...base, rootPath: '/' },
      { ...base, namespace: 'a/b' },
      { ...base, requestTimeoutMs: -1 },
      { ...base, acls: [] },
      { ...base, auth: [{ scheme: '', auth: 'x' }] },
    ];
    for (const o of bad)
      await expect(createZookeeperStore(o), JSON.stringify(o)).rejects.toBeInstanceOf(InvalidArgumentError);
  });
});

describe('zookeeper key names', () => {
  it('escape reversibly into valid znode names', () => {
    fc.assert(
      fc.property(fc.string({ unit: 'binary', maxLength: 40 }), (s) => {
        const wellFormed = Buffer.from(s, 'utf8').toString('utf8') === s;
        fc.pre(wellFormed);
        const e = escapeName(s);
        expect(unescapeName(e)).toBe(s);
        expect(e).not.toMatch(/\//);
        for (const ch of e) {
          const c = ch.charCodeAt(0);
          expect(c > 0x1f && !(c >= 0x7f && c <= 0x9f) && !(c >= 0xd800 && c <= 0xf8ff) && c < 0xfff0).toBe(true);
        }
        expect(parseLeafName(leafName(s.replaceAll('/', '')))).toBe(s.replaceAll('/', ''));
      }),
      { numRuns: 500 },
    );
    expect(escapeName('a%b/c')).toBe('a%25b%2Fc');
    expect(unescapeName('%zz')).toBeUndefined();
    expect(unescapeName('%FF')).toBeUndefined();
  });
});

describe('zookeeper backend on a private server', () => {
  let server: ServerHandle;
  let raw: Raw;
  const stores: ZookeeperStore[] = [];
  const ns = (): string => `b${randomBytes(4).toString('hex')}`;
  const open = async (namespace: string, extra: Partial<ZookeeperStoreOptions> = {}): Promise<ZookeeperStore> => {
    const s = await createZookeeperStore({ connectString: `127.0.0.1:${server.port}`, namespace, ...extra });
    stores.push(s);
    return s;
  };

  beforeAll(async () => {
    server = await startZookeeper();
    raw = await Raw.connect(server.port);
  });
  afterAll(async () => {
    for (const s of stores) await s.close();
    raw?.close();
    await server?.stop();
  });

  it('lays out namespaces, directories and keys as documented, under a chroot', async () => {
    const chroot = `/chroot${randomBytes(3).toString('hex')}`;
    const store = await openStore(`zk://127.0.0.1:${server.port}${chroot}`, { namespace: 'lay' });
    try {
      await store.txn({
        compare: [],
        then: [
          { op: 'put', key: 'groups/g1/members/m1', value: 'x' },
          { op: 'put', key: 'top', value: 'y' },
          { op: 'put', key: 'a/', value: 'empty leaf' },
        ],
      });
      const nsPath = `${chroot}/rebalancer/lay`;
      expect(JSON.parse((await raw.getData(nsPath)).toString())).toEqual({ layout: 1 });
      expect((await raw.children(nsPath)).sort()).toEqual(['d', 'rev']);
      expect((await raw.children(`${nsPath}/d`)).sort()).toEqual(['d', 'da%2F', 'dgroups%2Fg1%2Fmembers%2F']);
      expect(await raw.children(`${nsPath}/d/dgroups%2Fg1%2Fmembers%2F`)).toEqual(['km1']);
      expect(await raw.children(`${nsPath}/d/da%2F`)).toEqual(['k']);
      expect((await raw.getData(`${nsPath}/d/d/ktop`)).toString()).toBe('r1 1\ny');
      expect((await store.range('')).kvs.map((kv) => kv.key)).toEqual(['a/', 'groups/g1/members/m1', 'top']);
      // Deleting a directory's last key removes the directory.
      await store.txn({ compare: [], then: [{ op: 'deletePrefix', prefix: 'groups/' }] });
      expect((await raw.children(`${nsPath}/d`)).sort()).toEqual(['d', 'da%2F']);
      // A directory emptied by session expiry goes with the next write that reads it.
      const session = await store.openSession({ ttlMs: 2000 });
      await store.txn({ compare: [], then: [{ op: 'put', key: 'eph/1', value: 'x', session }] });
      expect(await raw.children(`${nsPath}/d`)).toContain('deph%2F');
      await session.close();
      expect(await raw.children(`${nsPath}/d/deph%2F`)).toEqual([]);
      await store.txn({
        compare: [{ key: 'eph/1', target: 'exists', exists: false }],
        then: [{ op: 'put', key: 'z', value: '' }],
      });
      expect(await raw.children(`${nsPath}/d`)).not.toContain('deph%2F');
    } finally {
      await store.close();
    }
  });

  it('keeps version and createRevision when a key moves between session and no session', async () => {
    const s = await open(ns());
    const session = await s.openSession({ ttlMs: 2000 });
    const r1 = await s.txn({ compare: [], then: [{ op: 'put', key: 'k', value: '1' }] });
    const r2 = await s.txn({ compare: [], then: [{ op: 'put', key: 'k', value: '2', session }] });
    expect(await s.get('k')).toMatchObject({
      value: '2',
      version: 2,
      createRevision: r1.revision,
      modRevision: r2.revision,
      sessionId: session.id,
    });
    const r3 = await s.txn({ compare: [], then: [{ op: 'put', key: 'k', value: '3', session }] });
    expect(await s.get('k')).toMatchObject({ version: 3, createRevision: r1.revision, modRevision: r3.revision });
    const r4 = await s.txn({ compare: [], then: [{ op: 'put', key: 'k', value: '4' }] });
    expect(await s.get('k')).toMatchObject({
      version: 4,
      createRevision: r1.revision,
      modRevision: r4.revision,
      sessionId: undefined,
    });
    await session.close();
    expect((await s.get('k'))?.value).toBe('4');
  });

  it('reports corrupt key data as CorruptDataError naming the key, and never overwrites it', async () => {
    const name = ns();
    const s = await open(name);
    await s.txn({
      compare: [],
      then: [
        { op: 'put', key: 'c/bad', value: 'v' },
        { op: 'put', key: 'c/notutf8', value: 'v' },
        { op: 'put', key: 'c/good', value: 'v' },
      ],
    });
    const dir = `${s.nsPath}/d/dc%2F`;
    await raw.setData(`${dir}/kbad`, Buffer.from('not an envelope'));
    await raw.setData(`${dir}/knotutf8`, Buffer.concat([Buffer.from('r1 1\n'), Buffer.from([0xff, 0xfe])]));
    for (const key of ['c/bad', 'c/notutf8']) {
      const err = await s.get(key).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(CorruptDataError);
      expect((err as CorruptDataError).key).toBe(key);
      expect((err as Error).message).toContain(key);
    }
    await expect(s.range('c/')).rejects.toBeInstanceOf(CorruptDataError);
    await expect(
      s.txn({ compare: [], then: [{ op: 'put', key: 'c/bad', value: 'overwrite' }] }),
    ).rejects.toBeInstanceOf(CorruptDataError);
    await expect(
      s.txn({ compare: [{ key: 'c/bad', target: 'exists', exists: true }], then: [] }),
    ).rejects.toBeInstanceOf(CorruptDataError);
    expect((await raw.getData(`${dir}/kbad`)).toString()).toBe('not an envelope');
    expect((await s.get('c/good'))?.value).toBe('v');
  });

  it('reports foreign znodes in the layout as CorruptDataError', async () => {
    const s = await open(ns());
    await s.txn({ compare: [], then: [{ op: 'put', key: 'f/x', value: 'v' }] });
    await raw.create(`${s.nsPath}/d/df%2F/stray`, Buffer.alloc(0));
    await expect(s.range('f/')).rejects.toBeInstanceOf(CorruptDataError);
    await raw.create(`${s.nsPath}/d/zzz`, Buffer.alloc(0));
    await expect(s.range('')).rejects.toBeInstanceOf(CorruptDataError);
  });

  it('refuses an unknown layout version with IncompatibleSchemaError and changes nothing', async () => {
    const name = ns();
    const s = await open(name);
    await s.txn({ compare: [], then: [{ op: 'put', key: 'k', value: 'v' }] });
    await s.close();
    await raw.setData(s.nsPath, Buffer.from('{"layout":2}'));
    const before = await raw.exists(`${s.nsPath}/rev`);
    const err = await open(name).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(IncompatibleSchemaError);
    expect(err).toMatchObject({ found: 2, supported: 1 });
    expect((await raw.getData(s.nsPath)).toString()).toBe('{"layout":2}');
    expect((await raw.exists(`${s.nsPath}/rev`))?.mzxid).toEqual(before?.mzxid);
    await raw.setData(s.nsPath, Buffer.from('garbage'));
    await expect(open(name)).rejects.toBeInstanceOf(CorruptDataError);
  });

  it('rolls the rev znode over before its version wraps, keeping writers serialised', async () => {
    const name = ns();
    const a = await open(name, { revRolloverVersion: 3 });
    const b = await open(name, { revRolloverVersion: 3 });
    await a.txn({ compare: [], then: [{ op: 'put', key: 'n', value: '0' }] });
    const revisions: number[] = [];
    await Promise.all(
      [a, b].map(async (s) => {
        for (let i = 0; i < 15; i++) {
          for (;;) {
            const cur = await s.get('n');
            const r = await s.txn({
              compare: [{ key: 'n', target: 'version', op: '=', value: cur?.version ?? 0 }],
              then: [{ op: 'put', key: 'n', value: String(Number(cur?.value) + 1) }],
            });
            if (r.succeeded) {
              revisions.push(r.revision);
              break;
            }
          }
        }
      }),
    );
    expect((await a.get('n'))?.value).toBe('30');
    expect(new Set(revisions).size).toBe(30);
    const rev = await raw.exists(`${a.nsPath}/rev`);
    expect(rev?.version).toBeLessThanOrEqual(3);
  });

  it('stays exact when writers move a key between sessions and connections concurrently', async () => {
    const name = ns();
    const writers = await Promise.all([open(name), open(name), open(name)]);
    const sessions = await Promise.all(writers.map((w) => w.openSession({ ttlMs: 3000 })));
    await writers[0]!.txn({ compare: [], then: [{ op: 'put', key: 'c/n', value: '0' }] });
    const each = 12;
    let createRevision = 0;
    await Promise.all(
      writers.map(async (w, i) => {
        for (let j = 0; j < each; j++) {
          for (;;) {
            const cur = await w.get('c/n');
            if (cur === undefined) throw new Error('counter vanished');
            createRevision = cur.createRevision;
            // Alternate: attached to this writer's session, detached, and a plain update.
            const session = j % 3 === 0 ? sessions[i] : undefined;
            const r = await w.txn({
              compare: [
                { key: 'c/n', target: 'version', op: '=', value: cur.version },
                { key: 'c/n', target: 'createRevision', op: '=', value: cur.createRevision },
              ],
              then: [
                { op: 'range', prefix: 'c/' },
                { op: 'put', key: 'c/n', value: String(Number(cur.value) + 1), session },
              ],
            });
            if (r.succeeded) break;
          }
        }
      }),
    );
    const final = await writers[0]!.get('c/n');
    expect(final).toMatchObject({ value: String(3 * each), version: 3 * each + 1, createRevision });
    for (const session of sessions) await session.close();
    // Whatever session held it last, the key survives only if it ended detached.
    const after = await writers[0]!.get('c/n');
    if (final?.sessionId === undefined) expect(after?.value).toBe(String(3 * each));
    else expect(after).toBeUndefined();
  });

  it('returns verified snapshots from range when nothing changes meanwhile', async () => {
    const s = await open(ns());
    await s.txn({
      compare: [],
      then: Array.from({ length: 20 }, (_, i) => ({ op: 'put' as const, key: `s/${i % 4}/${i}`, value: 'v' })),
    });
    const r = await s.range('s/');
    expect(r.kvs).toHaveLength(20);
    expect(r.snapshot).toBe(true);
  });

  it('accepts the largest transaction the contract allows', async () => {
    const s = await open(ns());
    const n = STORE_LIMITS.maxTxnOps;
    const keyBytes = STORE_LIMITS.maxKeyBytes;
    const valueBytes = Math.floor((900 * 1024 - n * keyBytes) / n);
    const ops = Array.from({ length: n }, (_, i) => ({
      op: 'put' as const,
      key: `${String(i).padStart(3, '0')}${'k'.repeat(keyBytes - 3)}`,
      value: 'v'.repeat(valueBytes),
    }));
    const r = await s.txn({ compare: [], then: ops });
    expect(r.succeeded).toBe(true);
    expect((await s.range('')).kvs).toHaveLength(n);
    // Re-writing every key attached to a session (delete + create each) still fits.
    const session = await s.openSession({ ttlMs: 2000 });
    await s.txn({ compare: [], then: ops.map((op) => ({ ...op, session })) });
    expect((await s.get(ops[0]!.key))?.sessionId).toBe(session.id);
    await session.close();
  });

  it('refuses, before sending, a transaction ZooKeeper could not take', async () => {
    const s = await open(ns());
    // Escaped characters (here '%') take three bytes in a znode name.
    const n = STORE_LIMITS.maxTxnOps;
    const ops = Array.from({ length: n }, (_, i) => ({
      op: 'put' as const,
      key: `${String(i).padStart(3, '0')}${'%'.repeat(STORE_LIMITS.maxKeyBytes - 3)}`,
      value: 'v'.repeat(Math.floor((900 * 1024 - n * STORE_LIMITS.maxKeyBytes) / n)),
    }));
    await s.txn({ compare: [], then: ops.slice(0, n / 2) });
    await s.txn({ compare: [], then: ops.slice(n / 2) });
    // Attaching each key re-creates its znode: the name travels twice.
    const session = await s.openSession({ ttlMs: 2000 });
    await expect(s.txn({ compare: [], then: ops.map((op) => ({ ...op, session })) })).rejects.toBeInstanceOf(
      LimitExceededError,
    );
    await session.close();
  });

  it('survives a connection closed in the middle of a reply (driver keeps half a frame)', async () => {
    const s = await open(ns());
    await s.txn({ compare: [], then: [{ op: 'put', key: 'k', value: 'v' }] });
    const conn = await s.mainConnection();
    const cm = (conn.client as unknown as { connectionManager: { pendingBuffer: Buffer | null } }).connectionManager;
    // What a socket destroyed after the first bytes of a 40-byte reply leaves behind.
    cm.pendingBuffer = Buffer.from([0, 0, 0, 40, 1, 2, 3]);
    conn.forceReconnect();
    let value: string | undefined;
    const deadline = Date.now() + 10_000;
    while (value === undefined && Date.now() < deadline) {
      value = (await s.get('k').catch(() => undefined))?.value;
      if (value === undefined) await new Promise((r) => setTimeout(r, 100));
    }
    expect(value).toBe('v');
  });

  it('asks for one tickTime less than the TTL, so that the server expires a session within its TTL', async () => {
    // The harness's server: tickTime 500, so minSessionTimeout 1000.
    const s = await open(ns());
    expect(s.tickTimeMs).toBe(500);
    const session = await s.openSession({ ttlMs: 2000 });
    // The server expires it at most a tick after the timeout it granted: within the 2000 ms asked.
    expect(session.ttlMs).toBe(1500);
    expect(s.expiryBoundMs(2000)).toBe(2000);
    // The holder's deadline follows what was granted, not what was asked (the safety direction).
    expect(session.safeUntilMs).toBeLessThanOrEqual(s.clock.now() + 1500);
    await session.close();
    // Told the tick: trusted as is.
    const told = await open(ns(), { tickTimeMs: 200 });
    expect(told.tickTimeMs).toBe(200);
    const s2 = await told.openSession({ ttlMs: 2000 });
    expect(s2.ttlMs).toBe(1800);
    await s2.close();
  });

  it('warns, naming the setting to change, when the server cannot expire sessions within their TTL', async () => {
    const warnings: Error[] = [];
    const onWarning = (w: Error): void => void warnings.push(w);
    process.on('warning', onWarning);
    try {
      const s = await open(ns());
      // 1000 − one tick (500) is below the server's minimum session timeout (1000 ms): granted 1000, expired up to
      // 1500 ms after the client was last heard.
      const session = await s.openSession({ ttlMs: 1000 });
      expect(session.ttlMs).toBe(1000);
      expect(s.expiryBoundMs(1000)).toBe(1500);
      const again = await s.openSession({ ttlMs: 1000 });
      await new Promise((r) => setImmediate(r));
      const ours = warnings.filter((w) => (w as { code?: string }).code === 'ZOOKEEPER_TICK_TOO_COARSE');
      expect(ours).toHaveLength(1); // once per TTL
      expect(ours[0]!.name).toBe('RebalancerWarning');
      expect(ours[0]!.message).toMatch(/tickTime to at most TTL\/10 \(here 100 ms\)/);
      await Promise.all([session.close(), again.close()]);
    } finally {
      process.off('warning', onWarning);
    }
  });

  it('closes without leaving sockets or timers behind', async () => {
    const handlesBefore = process.getActiveResourcesInfo().filter((r) => r === 'TCPSocketWrap').length;
    const s = await createZookeeperStore({ connectString: `127.0.0.1:${server.port}`, namespace: ns() });
    const session = await s.openSession({ ttlMs: 2000 });
    await s.txn({ compare: [], then: [{ op: 'put', key: 'x', value: '1', session }] });
    const w = await s.watch('', () => undefined);
    await s.close();
    await s.close();
    await w.close();
    expect(session.state).toBe('closed');
    await new Promise((r) => setTimeout(r, 100));
    const handlesAfter = process.getActiveResourcesInfo().filter((r) => r === 'TCPSocketWrap').length;
    expect(handlesAfter).toBeLessThanOrEqual(handlesBefore);
    await expect(s.get('x')).rejects.toThrow(/closed/);
  });

  it('fails fast with StoreUnavailableError when no server answers', async () => {
    const err = await createZookeeperStore({ connectString: '127.0.0.1:1', requestTimeoutMs: 500 }).catch(
      (e: unknown) => e,
    );
    expect(err).toMatchObject({ code: 'STORE_UNAVAILABLE' });
  });
});
