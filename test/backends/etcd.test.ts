/**
 * etcd-specific behaviour: URL and option parsing, the data layout, data
 * that Rebalancer did not write, layout versions, lease TTL rounding and
 * server-side lease loss. Runs against a private one-node etcd.
 */
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Etcd3 } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EtcdStore, createEtcdStore, openUrl, parseEtcdUrl } from '../../src/backends/etcd/index.js';
import {
  ClosedError,
  CorruptDataError,
  IncompatibleSchemaError,
  InvalidArgumentError,
  SessionExpiredError,
  StoreUnavailableError,
} from '../../src/errors.js';
import type { Store } from '../../src/store/contract.js';
import { openStore } from '../../src/store/open.js';
import { STORE_LIMITS } from '../../src/store/validate.js';
import { allocatePorts } from '../harness/ports.js';
import { releasePort } from '../harness/processes.js';
import { startEtcd, type ServerHandle } from '../harness/servers.js';

describe('etcd URL parsing', () => {
  it('accepts one or many hosts, default port, IPv6, TLS and credentials', () => {
    expect(parseEtcdUrl('etcd://127.0.0.1:2379')).toEqual({
      hosts: ['http://127.0.0.1:2379'],
      tls: false,
      auth: undefined,
    });
    expect(parseEtcdUrl('etcd://a:1,b:2,c/').hosts).toEqual(['http://a:1', 'http://b:2', 'http://c:2379']);
    expect(parseEtcdUrl('etcd://[::1]:2379').hosts).toEqual(['http://[::1]:2379']);
    expect(parseEtcdUrl('ETCDS://h1:2379,h2:2379')).toEqual({
      hosts: ['https://h1:2379', 'https://h2:2379'],
      tls: true,
      auth: undefined,
    });
    expect(parseEtcdUrl('etcd://root:p%40ss%3Aword@h:2379').auth).toEqual({ username: 'root', password: 'p@ss:word' });
  });

  it.each([
    ['http://127.0.0.1:2379', 'etcd://'],
    ['etcd://', 'no host'],
    ['etcd://h:2379/prefix', 'no path'],
    ['etcd://h:2379?namespace=x', 'no path, query'],
    ['etcd://h:0', 'out of range'],
    ['etcd://h:70000', 'out of range'],
    ['etcd://h:port', 'host[:port]'],
    ['etcd://a,,b', 'host[:port]'],
    ['etcd://user@h', 'user:password'],
    ['etcd://u:%zz@h', 'percent-encoding'],
  ])('rejects %s with a typed error that shows a valid URL', (url, why) => {
    let err: unknown;
    try {
      parseEtcdUrl(url);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(InvalidArgumentError);
    expect((err as Error).message).toContain(why);
    expect((err as Error).message).toContain('etcd://127.0.0.1:2379');
  });

  it('never echoes a password in an error', () => {
    expect(() => parseEtcdUrl('etcd://root:secret@h:2379/x')).toThrow(/root:\*\*\*@/);
    expect(() => parseEtcdUrl('etcd://root:secret@h:2379/x')).not.toThrow(/secret/);
  });

  it('validates options before connecting', async () => {
    await expect(openStore('etcd://h:2379/oops')).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(openUrl('etcd://127.0.0.1:1', { namespace: 'bad/ns' })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(openUrl('etcd://127.0.0.1:1', { requestTimeoutMs: -1 })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(createEtcdStore({})).rejects.toThrow(/needs url .* or hosts/);
    await expect(createEtcdStore({ url: 'etcd://a:1', hosts: ['http://a:1'] })).rejects.toBeInstanceOf(
      InvalidArgumentError,
    );
    await expect(createEtcdStore({ hosts: ['a:1'] })).rejects.toThrow(/http:\/\/host:port/);
    await expect(createEtcdStore({ hosts: ['http://a:1', 'https://b:1'] })).rejects.toThrow(/not a mix/);
  });
});

describe('etcd backend on a private server', () => {
  let server: ServerHandle;
  let raw: Etcd3;
  const stores: Store[] = [];
  const ns = (): string => `u${randomBytes(5).toString('hex')}`;
  const open = async (namespace: string): Promise<EtcdStore> => {
    const s = await createEtcdStore({ url: server.url, namespace, requestTimeoutMs: 3000 });
    stores.push(s);
    return s;
  };
  const rawGet = async (key: string): Promise<Buffer | null> => raw.get(key).buffer();

  beforeAll(async () => {
    server = await startEtcd();
    raw = new Etcd3({ hosts: `http://127.0.0.1:${server.port}` });
  });

  afterAll(async () => {
    for (const s of stores) await s.close();
    raw?.close();
    await server?.stop();
  });

  it('lays keys out under rebalancer/<ns>/k/ with a layout marker beside them', async () => {
    const n = ns();
    const s = await open(n);
    const session = await s.openSession({ ttlMs: 2000 });
    await s.txn({ compare: [], then: [{ op: 'put', key: 'a/b', value: 'é', session }] });
    expect((await rawGet(`rebalancer/${n}/layout`))?.toString()).toBe('1');
    expect((await rawGet(`rebalancer/${n}/k/a/b`))?.toString()).toBe('é');
    // The session id is the lease id in hex, as etcdctl prints it.
    const keys = await raw.getAll().prefix(`rebalancer/${n}/`).keys();
    // …and the namespace's incarnation record (docs/adr/0009), a key of the contract like any other.
    expect(keys.sort()).toEqual([
      `rebalancer/${n}/k/.rebalancer/incarnation`,
      `rebalancer/${n}/k/a/b`,
      `rebalancer/${n}/layout`,
    ]);
    const leaseHex = (await s.get('a/b'))?.sessionId;
    expect(leaseHex).toBe(session.id);
    const ttl = await raw.leaseClient.leaseTimeToLive({
      ID: BigInt.asIntN(64, BigInt(`0x${session.id}`)).toString(),
      keys: true,
    });
    expect(ttl.keys.map((k) => k.toString())).toEqual([`rebalancer/${n}/k/a/b`]);
    // The layout key never shows up in a range.
    expect((await s.range('')).kvs.map((kv) => kv.key)).toEqual(['a/b']);
    await session.close();
  });

  it('reports the TTL etcd granted: whole seconds, at least its minimum', async () => {
    const s = await open(ns());
    const a = await s.openSession({ ttlMs: 1000 });
    const b = await s.openSession({ ttlMs: 2500 });
    expect(a.ttlMs).toBe(2000);
    expect(b.ttlMs).toBe(3000);
    expect(b.safeUntilMs).toBeLessThanOrEqual(s.clock.now() + 3000);
    expect(b.safeUntilMs).toBeGreaterThan(s.clock.now() + 2500);
    expect(s.limits).toEqual({ ...STORE_LIMITS, maxSessionTtlMs: 30_000 });
    await a.close();
    await b.close();
  });

  it('refuses to touch a namespace with an unknown layout version', async () => {
    const n = ns();
    await raw.put(`rebalancer/${n}/layout`).value('2');
    await raw.put(`rebalancer/${n}/k/x`).value('old');
    const err = await createEtcdStore({ url: server.url, namespace: n }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(IncompatibleSchemaError);
    expect(err).toMatchObject({ found: 2, supported: 1 });
    expect((await rawGet(`rebalancer/${n}/layout`))?.toString()).toBe('2');
    expect((await rawGet(`rebalancer/${n}/k/x`))?.toString()).toBe('old');
  });

  it('reports a layout marker it cannot read as corrupt, and leaves it alone', async () => {
    for (const bad of [Buffer.from('one'), Buffer.from([0xff, 0xfe])]) {
      const n = ns();
      await raw.put(`rebalancer/${n}/layout`).value(bad);
      await expect(createEtcdStore({ url: server.url, namespace: n })).rejects.toBeInstanceOf(CorruptDataError);
      expect(await rawGet(`rebalancer/${n}/layout`)).toEqual(bad);
    }
  });

  it('reports values and keys that are not UTF-8 as corrupt data, and never overwrites them', async () => {
    const n = ns();
    const s = await open(n);
    const bad = Buffer.from([0x61, 0xc3, 0x28]);
    await raw.put(`rebalancer/${n}/k/v/bad`).value(bad);
    await expect(s.get('v/bad')).rejects.toBeInstanceOf(CorruptDataError);
    await expect(s.range('v/')).rejects.toBeInstanceOf(CorruptDataError);
    await expect(s.txn({ compare: [], then: [{ op: 'get', key: 'v/bad' }] })).rejects.toBeInstanceOf(CorruptDataError);
    expect(await rawGet(`rebalancer/${n}/k/v/bad`)).toEqual(bad);
    await raw.put(Buffer.concat([Buffer.from(`rebalancer/${n}/k/w/`), Buffer.from([0xff])])).value('x');
    const err = await s.range('w/').then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(CorruptDataError);
    expect((err as Error).message).toMatch(/not valid UTF-8/);
  });

  it('fails a txn whose lease etcd revoked behind the session’s back, and expires the session', async () => {
    const n = ns();
    const s = await open(n);
    const session = await s.openSession({ ttlMs: 10_000 });
    await raw.leaseClient.leaseRevoke({ ID: BigInt.asIntN(64, BigInt(`0x${session.id}`)).toString() });
    const err = await s
      .txn({
        compare: [],
        then: [
          { op: 'put', key: 'plain', value: '1' },
          { op: 'put', key: 'bound', value: '1', session },
        ],
      })
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    expect(err).toBeInstanceOf(SessionExpiredError);
    expect((err as SessionExpiredError).sessionId).toBe(session.id);
    expect(session.state).toBe('expired');
    expect(await s.get('plain')).toBeUndefined();
    // The next keep-alive would have said so too: etcd answers TTL 0 for a lost lease.
    const other = await s.openSession({ ttlMs: 10_000 });
    await raw.leaseClient.leaseRevoke({ ID: BigInt.asIntN(64, BigInt(`0x${other.id}`)).toString() });
    await expect(other.keepAlive()).rejects.toBeInstanceOf(SessionExpiredError);
    expect(other.state).toBe('expired');
  });

  it('rejects sessions of another store', async () => {
    const a = await open(ns());
    const b = await open(ns());
    const session = await a.openSession({ ttlMs: 2000 });
    await expect(b.txn({ compare: [], then: [{ op: 'put', key: 'k', value: 'v', session }] })).rejects.toBeInstanceOf(
      InvalidArgumentError,
    );
    await session.close();
  });

  it('closes idempotently, revoking its sessions, and refuses further use', async () => {
    const n = ns();
    const s = await createEtcdStore({ url: server.url, namespace: n });
    const session = await s.openSession({ ttlMs: 5000 });
    await s.txn({ compare: [], then: [{ op: 'put', key: 'held', value: '1', session }] });
    await Promise.all([s.close(), s.close()]);
    await s.close();
    expect(session.state).toBe('closed');
    expect(await rawGet(`rebalancer/${n}/k/held`)).toBeNull();
    await expect(s.get('held')).rejects.toBeInstanceOf(ClosedError);
    await expect(s.openSession({ ttlMs: 2000 })).rejects.toBeInstanceOf(ClosedError);
    await expect(s.watch('', () => undefined)).rejects.toBeInstanceOf(ClosedError);
  });

  it('bounds every request when nothing answers', async () => {
    // A reserved port nobody listens on.
    const [port] = (await allocatePorts(1)) as [number];
    const started = Date.now();
    const err = await createEtcdStore({ url: `etcd://127.0.0.1:${port}`, requestTimeoutMs: 800 }).then(
      () => undefined,
      (e: unknown) => e,
    );
    releasePort(port);
    expect(err).toBeInstanceOf(StoreUnavailableError);
    expect(Date.now() - started).toBeLessThan(5000);
  });

  /** Run a script in a fresh Node process (as a user would), bounded; returns exit status and output. */
  function runScript(body: string): { status: number | null; signal: string | null; stdout: string } {
    const open = pathToFileURL(resolve('src/store/open.ts')).href;
    const file = join(tmpdir(), `rb-etcd-script-${randomBytes(4).toString('hex')}.mts`);
    writeFileSync(file, `import { openStore } from ${JSON.stringify(open)};\n${body}\n`);
    try {
      const r = spawnSync(process.execPath, ['--import', 'tsx', file], { encoding: 'utf8', timeout: 30_000 });
      return { status: r.status, signal: r.signal, stdout: r.stdout };
    } finally {
      rmSync(file, { force: true });
    }
  }

  it('keeps a process alive while a request is pending, even when etcd is down', () => {
    // Regression: with only unref'd timers pending between retries, a top-level
    // await would end the process (exit 13) without an answer.
    const r = runScript(`
      try { await openStore('etcd://127.0.0.1:1', { requestTimeoutMs: 500 }); console.log('opened'); }
      catch (e) { console.log('rejected:' + e.constructor.name); }`);
    expect(r.signal).toBeNull();
    expect(r.status).toBe(0);
    expect(r.stdout).toContain('rejected:StoreUnavailableError');
  });

  it('leaves nothing that keeps the process alive after close()', () => {
    const r = runScript(`
      const s = await openStore(${JSON.stringify(server.url)}, { namespace: 'exit${randomBytes(3).toString('hex')}' });
      const session = await s.openSession({ ttlMs: 2000 });
      const w = await s.watch('', () => undefined);
      await s.txn({ compare: [], then: [{ op: 'put', key: 'k', value: 'v', session }] });
      await s.close();
      console.log('closed', session.state);`);
    // The process ends by itself, promptly: no sockets, streams or timers left.
    expect(r.signal).toBeNull();
    expect(r.status).toBe(0);
    expect(r.stdout).toContain('closed closed');
  });
});
