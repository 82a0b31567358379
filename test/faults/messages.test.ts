/**
 * What a client is told when its server cannot be reached: a message in
 * plain words that names the server (host:port), says what happened and what
 * to check, with the driver's own error as the cause — never the driver's
 * text ("Reached the max retries per request limit", "14 UNAVAILABLE: …",
 * "connect ECONNREFUSED …") as the message. Each backend twice: a server that
 * never answered (a port nobody listens on), and one killed under an open store.
 */
import { randomBytes } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { createEtcdStore } from '../../src/backends/etcd/index.js';
import { createPostgresStore } from '../../src/backends/postgres/index.js';
import { createRedisStore } from '../../src/backends/redis/index.js';
import { createZookeeperStore } from '../../src/backends/zookeeper/index.js';
import { RebalancerError, StoreUnavailableError } from '../../src/errors.js';
import type { Store } from '../../src/store/contract.js';
import { openStore } from '../../src/store/open.js';
import { allocatePorts } from '../harness/ports.js';
import { releasePort } from '../harness/processes.js';
import { startEtcd, startPostgres, startRedis, startZookeeper, type ServerHandle } from '../harness/servers.js';

/** Words of drivers, gRPC and Node that must not reach a user as our message. */
const JARGON = [
  /\bE[A-Z]{3,}\b/, // Node's error codes: ECONNREFUSED, EHOSTUNREACH, ENOTFOUND…
  /\b\d+ [A-Z_]{5,}:/, // gRPC statuses: "14 UNAVAILABLE:"
  /UNAVAILABLE|CONNECTION_LOSS|Exception|\[-\d+\]/,
  /no connection established|grpc|max retries|enableOfflineQueue|isn't writeable|connection is closed/i,
  /timeout exceeded when trying|connection terminated|not queryable/i,
];

const REQUEST_TIMEOUT_MS = 1500;

const errorOf = (p: Promise<unknown>): Promise<unknown> =>
  p.then(
    () => undefined,
    (e: unknown) => e,
  );

function expectPlainWords(err: unknown, server: string): void {
  expect(err).toBeInstanceOf(RebalancerError);
  const message = (err as Error).message;
  expect(message, message).toContain(server);
  for (const jargon of JARGON) expect(message, message).not.toMatch(jargon);
  // What to do, not only what broke.
  expect(message, message).toMatch(/check|retry|re-read/);
}

/** The driver's error is kept, as the cause. */
function expectDriverCause(err: unknown): void {
  const cause = (err as Error).cause;
  expect(cause).toBeInstanceOf(Error);
  expect(cause).not.toBeInstanceOf(RebalancerError);
}

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => undefined);
});

async function freePort(): Promise<number> {
  const [port] = (await allocatePorts(1)) as [number];
  cleanups.push(async () => releasePort(port));
  return port;
}

async function server(start: () => Promise<ServerHandle>): Promise<ServerHandle> {
  const s = await start();
  cleanups.push(() => s.stop());
  return s;
}

function track<S extends Store>(s: S): S {
  cleanups.push(() => s.close());
  return s;
}

const ns = (): string => `m${randomBytes(4).toString('hex')}`;

describe('a server that does not answer is reported in plain words', () => {
  it('redis', async () => {
    const port = await freePort();
    const where = `Redis at 127.0.0.1:${port}`;
    for (const open of [
      () => createRedisStore({ url: `redis://127.0.0.1:${port}`, requestTimeoutMs: REQUEST_TIMEOUT_MS }),
      () => openStore(`redis://127.0.0.1:${port}/2`, { requestTimeoutMs: REQUEST_TIMEOUT_MS }),
    ]) {
      const err = await errorOf(open());
      expect(err).toBeInstanceOf(StoreUnavailableError);
      expect((err as Error).message).toBe(
        `${where} is not answering (connection refused); check that the server runs and the URL is right`,
      );
      expectDriverCause(err);
    }
    const s = await server(startRedis);
    const store = track(await createRedisStore({ url: s.url, namespace: ns(), requestTimeoutMs: REQUEST_TIMEOUT_MS }));
    const session = await store.openSession({ ttlMs: 5000 });
    // In flight when the connection dropped (ioredis: "Reached the max retries per request limit (which is 0)")…
    s.pause();
    const pending = errorOf(store.txn({ compare: [], then: [{ op: 'put', key: 'k', value: 'v', session }] }));
    await new Promise((r) => setTimeout(r, 100));
    await s.kill();
    const inFlight = await pending;
    expectPlainWords(inFlight, `Redis at 127.0.0.1:${s.port}`);
    expect((inFlight as StoreUnavailableError).outcome).toBe('unknown');
    // …and sent while it is down: both told in words.
    const later = await errorOf(store.get('k'));
    expectPlainWords(later, `Redis at 127.0.0.1:${s.port}`);
  });

  it('postgres', async () => {
    const port = await freePort();
    const err = await errorOf(
      createPostgresStore({
        connectionString: `postgres://app@127.0.0.1:${port}/db`,
        requestTimeoutMs: REQUEST_TIMEOUT_MS,
      }),
    );
    expect(err).toBeInstanceOf(StoreUnavailableError);
    expect((err as Error).message).toBe(
      `PostgreSQL at 127.0.0.1:${port} is not answering (connection refused); check that the server runs and the URL is right`,
    );
    expectDriverCause(err);
    const s = await server(startPostgres);
    const store = track(
      await createPostgresStore({ connectionString: s.url, namespace: ns(), requestTimeoutMs: REQUEST_TIMEOUT_MS }),
    );
    await s.kill();
    expectPlainWords(await errorOf(store.get('k')), `PostgreSQL at 127.0.0.1:${s.port}`);
    expectPlainWords(
      await errorOf(store.txn({ compare: [], then: [{ op: 'put', key: 'k', value: 'v' }] })),
      `PostgreSQL at 127.0.0.1:${s.port}`,
    );
  });

  it('etcd', async () => {
    const port = await freePort();
    const err = await errorOf(
      createEtcdStore({ url: `etcd://127.0.0.1:${port}`, requestTimeoutMs: REQUEST_TIMEOUT_MS }),
    );
    expect(err).toBeInstanceOf(StoreUnavailableError);
    expect((err as Error).message).toBe(
      `etcd at 127.0.0.1:${port} is not answering (connection refused); check that the server runs and the URL is right`,
    );
    expectDriverCause(err);
    const s = await server(startEtcd);
    const store = track(await createEtcdStore({ url: s.url, namespace: ns(), requestTimeoutMs: REQUEST_TIMEOUT_MS }));
    await s.kill();
    expectPlainWords(await errorOf(store.get('k')), `etcd at 127.0.0.1:${s.port}`);
    expectPlainWords(
      await errorOf(store.txn({ compare: [], then: [{ op: 'put', key: 'k', value: 'v' }] })),
      `etcd at 127.0.0.1:${s.port}`,
    );
  });

  it('zookeeper', async () => {
    const port = await freePort();
    const err = await errorOf(
      createZookeeperStore({ connectString: `127.0.0.1:${port}`, requestTimeoutMs: REQUEST_TIMEOUT_MS }),
    );
    expect(err).toBeInstanceOf(StoreUnavailableError);
    expect((err as Error).message).toBe(
      `ZooKeeper at 127.0.0.1:${port} is not answering (no session within ${REQUEST_TIMEOUT_MS} ms); check that the ` +
        'server runs and the URL is right',
    );
    const s = await server(startZookeeper);
    const store = track(
      await createZookeeperStore({
        connectString: `127.0.0.1:${s.port}`,
        namespace: ns(),
        requestTimeoutMs: REQUEST_TIMEOUT_MS,
      }),
    );
    await s.kill();
    expectPlainWords(await errorOf(store.get('k')), `ZooKeeper at 127.0.0.1:${s.port}`);
    expectPlainWords(
      await errorOf(store.txn({ compare: [], then: [{ op: 'put', key: 'k', value: 'v' }] })),
      `ZooKeeper at 127.0.0.1:${s.port}`,
    );
  });
});
