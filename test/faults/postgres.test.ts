/**
 * Fault tests of the PostgreSQL backend on a private server: paused past the
 * TTL, killed and restarted on the same data, and a client's connections
 * blackholed past the TTL. What is asserted is behaviour, never speed: the
 * holder ends up told its session expired, its keys vanish and watchers hear,
 * its guarded write is refused, and afterwards everything works again and
 * watches have delivered a resync hint. Every wait is bounded.
 */
import { randomBytes } from 'node:crypto';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { type PostgresStore, createPostgresStore } from '../../src/backends/postgres/index.js';
import { ClockRateError, StoreUnavailableError } from '../../src/errors.js';
import { ScaledClock, systemClock } from '../../src/store/clock.js';
import type { Session, Store, WatchHint } from '../../src/store/contract.js';
import { Election, type Leadership } from '../../src/store/election.js';
import { startProxy, type TcpProxy } from '../harness/proxy.js';
import { startPostgres, type ServerHandle } from '../harness/servers.js';
import { eventually, sleep } from '../harness/wait.js';

const TTL_MS = 1000;
/** Keep requests short so that a stalled server is noticed well within the test's bounds. */
const REQUEST_TIMEOUT_MS = 800;
/** How long after the TTL a session's keys may linger (reaper tick + a request), generously. */
const EXPIRY_BOUND_MS = 2000;

class HintLog {
  readonly hints: WatchHint[] = [];
  readonly fn = (h: WatchHint): void => void this.hints.push(h);
  resyncsAfter(n: number): number {
    return this.hints.slice(n).filter((h) => h.reason === 'resync').length;
  }
}

let server: ServerHandle;
const stores: Store[] = [];

async function open(url: string, namespace: string): Promise<PostgresStore> {
  const s = await createPostgresStore({
    connectionString: url,
    schema: 'faults',
    namespace,
    requestTimeoutMs: REQUEST_TIMEOUT_MS,
    pollIntervalMs: 200,
  });
  stores.push(s);
  return s;
}

/** A holder: a session, a key attached to it, and leadership of an election. */
async function holder(store: Store): Promise<{ session: Session; leadership: Leadership }> {
  const session = await store.openSession({ ttlMs: TTL_MS });
  await store.txn({ compare: [], then: [{ op: 'put', key: 'held/x', value: 'x', session }] });
  const election = new Election(store, { prefix: 'lead/', recheckIntervalMs: 200 });
  const leadership = await election.campaign(session, 'a', AbortSignal.timeout(10_000));
  return { session, leadership };
}

/** After healing: a fresh session, a write attached to it, reads and a txn all work. */
async function worksAgain(store: Store): Promise<void> {
  await eventually(
    async () => {
      const s = await store.openSession({ ttlMs: TTL_MS });
      const key = `after/${randomBytes(3).toString('hex')}`;
      const r = await store.txn({
        compare: [{ key, target: 'exists', exists: false }],
        then: [{ op: 'put', key, value: 'v', session: s }],
      });
      const kv = await store.get(key);
      await s.close();
      return r.succeeded && kv?.sessionId === s.id;
    },
    { what: 'a fresh session, an attached write and a read to work again', timeoutMs: 15_000, intervalMs: 200 },
  );
}

beforeAll(async () => {
  server = await startPostgres();
});

afterEach(async () => {
  server.resume();
  for (const s of stores.splice(0)) await s.close().catch(() => undefined);
});

afterAll(async () => {
  await server?.stop();
});

describe('postgres faults', () => {
  it('server paused past the TTL, then resumed: the holder is told, its keys vanish, fencing holds, watches resync', async () => {
    const ns = `p${randomBytes(4).toString('hex')}`;
    const a = await open(server.url, ns);
    const { session, leadership } = await holder(a);
    const log = new HintLog();
    const w = await a.watch('held/', log.fn);
    const n = log.hints.length;

    server.pause();
    try {
      // The client cannot reach the server: its own deadline expires the session (it never trusts a dead one).
      await eventually(() => session.state === 'expired', {
        what: 'the session to be reported expired',
        timeoutMs: TTL_MS + EXPIRY_BOUND_MS,
      });
      await sleep(TTL_MS);
    } finally {
      server.resume();
    }
    // The server's clock ran on while it was stopped: the session is expired there too.
    const observer = await open(server.url, ns);
    await eventually(async () => (await observer.get('held/x')) === undefined, {
      what: 'the held key to vanish',
      timeoutMs: TTL_MS + EXPIRY_BOUND_MS,
    });
    await eventually(async () => (await observer.get(leadership.key)) === undefined, {
      what: 'the leadership key to vanish',
      timeoutMs: EXPIRY_BOUND_MS,
    });
    const stale = await a.txn({ compare: [leadership.guard], then: [{ op: 'put', key: 'fenced', value: 'stale' }] });
    expect(stale.succeeded).toBe(false);
    expect(await observer.get('fenced')).toBeUndefined();
    await worksAgain(a);
    await eventually(() => log.resyncsAfter(n) > 0, { what: 'a resync hint', timeoutMs: 10_000 });
    await w.close();
  }, 60_000);

  it('server killed and restarted on its data: data and revisions persist, sessions whose TTL passed are expired and the client is told', async () => {
    const ns = `k${randomBytes(4).toString('hex')}`;
    const a = await open(server.url, ns);
    const durable = await a.txn({ compare: [], then: [{ op: 'put', key: 'durable', value: 'kept' }] });
    const { session, leadership } = await holder(a);
    const log = new HintLog();
    const w = await a.watch('', log.fn);
    const n = log.hints.length;

    await server.kill();
    // Down for longer than the TTL.
    await eventually(() => session.state === 'expired', {
      what: 'the session to be reported expired',
      timeoutMs: TTL_MS + EXPIRY_BOUND_MS,
    });
    await sleep(TTL_MS);
    await server.restart();

    const kv = await eventually(() => a.get('durable'), {
      what: 'reads to work after the restart',
      timeoutMs: 15_000,
      intervalMs: 200,
    });
    expect(kv).toMatchObject({ value: 'kept', createRevision: durable.revision });
    // The server expired the session by its own clock: its keys go, and a stale guarded write is refused.
    await eventually(async () => (await a.get('held/x')) === undefined, {
      what: 'the held key to vanish',
      timeoutMs: TTL_MS + EXPIRY_BOUND_MS,
    });
    expect(await a.get(leadership.key)).toBeUndefined();
    const stale = await a.txn({ compare: [leadership.guard], then: [{ op: 'put', key: 'fenced', value: 'stale' }] });
    expect(stale.succeeded).toBe(false);
    // Revisions never go backwards across the restart.
    const next = await a.txn({ compare: [], then: [{ op: 'put', key: 'durable', value: 'again' }] });
    expect(next.revision).toBeGreaterThan(stale.revision);
    expect(next.revision).toBeGreaterThan(leadership.token);
    await worksAgain(a);
    await eventually(() => log.resyncsAfter(n) > 0, { what: 'a resync hint', timeoutMs: 10_000 });
    await w.close();
  }, 90_000);

  describe('client connections blackholed', () => {
    let proxy: TcpProxy;

    beforeAll(async () => {
      proxy = await startProxy({ host: '127.0.0.1', port: server.port });
    });

    afterAll(async () => {
      await proxy?.close();
    });

    // Healing with 'pass' alone keeps the connections (like a real partition, minus the bytes dropped meanwhile);
    // with a reset every connection of the client is cut when the partition ends.
    it.each([
      ['connections kept', false],
      ['connections reset', true],
    ])(
      'past the TTL, then healed (%s): the holder expires itself, the server expires it, another leader is fenced in',
      async (_name, reset) => {
        const ns = `b${randomBytes(4).toString('hex')}`;
        const viaProxy = server.url.replace(`:${server.port}/`, `:${proxy.port}/`);
        const a = await open(viaProxy, ns);
        const b = await open(server.url, ns);
        const { session, leadership } = await holder(a);
        const aLog = new HintLog();
        const aWatch = await a.watch('held/', aLog.fn);
        const bLog = new HintLog();
        const bWatch = await b.watch('held/', bLog.fn);
        const an = aLog.hints.length;
        const bn = bLog.hints.length;

        const cutAt = Date.now();
        proxy.setMode('blackhole');
        try {
          // A silent partition: no error, no reset. The holder's own deadline must end the session.
          await eventually(() => session.state === 'expired', {
            what: 'the session to be reported expired',
            timeoutMs: TTL_MS + EXPIRY_BOUND_MS,
          });
          expect(Date.now() - cutAt).toBeLessThanOrEqual(TTL_MS + EXPIRY_BOUND_MS);
          // The server expires it by its clock; another client sees the keys vanish and hears it.
          await eventually(async () => (await b.get('held/x')) === undefined, {
            what: 'the held key to vanish',
            timeoutMs: TTL_MS + EXPIRY_BOUND_MS,
          });
          await eventually(() => bLog.hints.length > bn, {
            what: 'a hint to B that the key vanished',
            timeoutMs: EXPIRY_BOUND_MS,
          });
          const bSession = await b.openSession({ ttlMs: TTL_MS });
          const bLead = await new Election(b, { prefix: 'lead/', recheckIntervalMs: 200 }).campaign(
            bSession,
            'b',
            AbortSignal.timeout(TTL_MS + EXPIRY_BOUND_MS + 5000),
          );
          expect(bLead.token).toBeGreaterThan(leadership.token);
          expect(
            (await b.txn({ compare: [bLead.guard], then: [{ op: 'put', key: 'fenced', value: 'b' }] })).succeeded,
          ).toBe(true);
          // Still cut off: requests fail within the request timeout instead of hanging.
          const err = await a.get('held/x').then(
            () => undefined,
            (e: unknown) => e,
          );
          expect((err as { code?: string } | undefined)?.code).toBe('STORE_UNAVAILABLE');
          // A write that never got its COMMIT out is reported as not applied, and truly was not.
          const cut = await a.txn({ compare: [], then: [{ op: 'put', key: 'cut', value: 'x' }] }).then(
            () => undefined,
            (e: unknown) => e,
          );
          expect(cut).toBeInstanceOf(StoreUnavailableError);
          expect((cut as StoreUnavailableError).outcome).toBe('not-applied');
        } finally {
          proxy.setMode('pass');
          if (reset) proxy.resetAll();
        }
        // Healed: the stale holder's guarded write is refused by the store.
        await eventually(
          async () => {
            const r = await a.txn({
              compare: [leadership.guard],
              then: [{ op: 'put', key: 'fenced', value: 'stale' }],
            });
            return !r.succeeded;
          },
          { what: "the stale holder's guarded write to be refused", timeoutMs: 15_000, intervalMs: 200 },
        );
        expect((await b.get('fenced'))?.value).toBe('b');
        expect(await b.get('cut')).toBeUndefined();
        await worksAgain(a);
        await eventually(() => aLog.resyncsAfter(an) > 0, { what: "a resync hint of A's watch", timeoutMs: 15_000 });
        // And A's watch hears changes again.
        const seen = aLog.hints.length;
        await b.txn({ compare: [], then: [{ op: 'put', key: 'held/y', value: 'y' }] });
        await eventually(() => aLog.hints.length > seen, { what: "A's watch to hear B's write", timeoutMs: 5000 });
        await aWatch.close();
        await bWatch.close();
      },
      90_000,
    );
  });
});

describe("this host's clock runs slow against the PostgreSQL server's (issue 12 item 5)", () => {
  it('at 0.75: every session ends with CLOCK_RATE and none is granted while it stays so; at 1: nothing happens', async () => {
    const ns = `rate${randomBytes(4).toString('hex')}`;
    const slow = await createPostgresStore({
      connectionString: server.url,
      schema: 'faults',
      namespace: ns,
      clock: new ScaledClock(systemClock, 0.75),
    });
    stores.push(slow);
    const right = await open(server.url, ns);
    expect(slow.clockRateCheck).toBe('server');
    const s = await slow.openSession({ ttlMs: TTL_MS });
    const ok = await right.openSession({ ttlMs: TTL_MS });
    const end = await Promise.race([s.ended, sleep(10_000).then(() => undefined)]);
    expect(end?.state).toBe('expired');
    expect(end?.cause).toBeInstanceOf(ClockRateError);
    const refused = await slow.openSession({ ttlMs: TTL_MS }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(refused).toMatchObject({ code: 'CLOCK_RATE', retryable: true });
    expect(ok.state).toBe('live');
    await ok.close();
  }, 30_000);
});
