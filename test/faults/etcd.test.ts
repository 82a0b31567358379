/**
 * etcd under faults, on a private one-node server: paused (SIGSTOP) past the
 * session TTL, killed and restarted on the same data, and a client cut off by
 * a silent network partition. Assertions are about what the client is told
 * and what the server enforces, never about speed; every wait is bounded.
 */
import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createEtcdStore, type EtcdStore } from '../../src/backends/etcd/index.js';
import { CorruptDataError, SessionExpiredError, StoreUnavailableError } from '../../src/errors.js';
import type { Session, SessionState, WatchHint } from '../../src/store/contract.js';
import { startProxy, type TcpProxy } from '../harness/proxy.js';
import { startEtcd, type ServerHandle } from '../harness/servers.js';
import { eventually, sleep } from '../harness/wait.js';

const TTL_MS = 2000;
/** Keys vanish at most this long after TTL (etcd's 500 ms expiry scan, then a Raft commit). */
const EXPIRY_BOUND_MS = 1000;
const REQUEST_TIMEOUT_MS = 1500;
/** etcd's default election timeout: a new leader extends every lease by it. */
const ELECTION_TIMEOUT_MS = 1000;

const ns = (): string => `f${randomBytes(5).toString('hex')}`;

class Hints {
  readonly list: WatchHint[] = [];
  readonly fn = (h: WatchHint): void => void this.list.push(h);
  since(n: number): WatchHint[] {
    return this.list.slice(n);
  }
}

/** Record when a session reached each state. */
function track(session: Session): Map<SessionState, number> {
  const at = new Map<SessionState, number>();
  session.onStateChange((state) => {
    if (!at.has(state)) at.set(state, Date.now());
  });
  return at;
}

/** A write guarded by the holder's key still having its create revision (the fencing check). */
async function guardedWrite(s: EtcdStore, holderKey: string, token: number, value: string): Promise<boolean> {
  const r = await s.txn({
    compare: [{ key: holderKey, target: 'createRevision', op: '=', value: token }],
    then: [{ op: 'put', key: 'fenced', value }],
  });
  return r.succeeded;
}

describe('etcd faults (private one-node server)', () => {
  let server: ServerHandle;
  const stores: EtcdStore[] = [];
  const open = async (namespace: string, url = server.url): Promise<EtcdStore> => {
    const s = await createEtcdStore({ url, namespace, requestTimeoutMs: REQUEST_TIMEOUT_MS });
    stores.push(s);
    return s;
  };

  beforeAll(async () => {
    server = await startEtcd();
  });
  afterEach(async () => {
    server.resume();
    for (const s of stores.splice(0)) await s.close();
  });
  afterAll(async () => {
    await server?.stop();
  });

  /** After any fault: new sessions, reads, txns and watches work. */
  async function worksAgain(namespace: string): Promise<void> {
    const s = await open(namespace);
    const session = await s.openSession({ ttlMs: TTL_MS });
    const hints = new Hints();
    const w = await s.watch('after/', hints.fn);
    const r = await s.txn({ compare: [], then: [{ op: 'put', key: 'after/x', value: '1', session }] });
    expect((await s.get('after/x'))?.sessionId).toBe(session.id);
    await eventually(() => hints.list.some((h) => h.revision >= r.revision), {
      what: 'a hint of the write after healing',
      timeoutMs: 5000,
    });
    await w.close();
    await session.close();
  }

  it('server paused past the TTL: the holder is told first, its keys vanish, watches resync', async () => {
    const n = ns();
    const holder = await open(n);
    const observer = await open(n);
    const session = await holder.openSession({ ttlMs: TTL_MS });
    const states = track(session);
    const put = await holder.txn({ compare: [], then: [{ op: 'put', key: 'lead/h', value: 'h', session }] });
    const token = put.revision;
    const hints = new Hints();
    await observer.watch('lead/', hints.fn);

    const pausedAt = Date.now();
    server.pause();
    // While etcd is frozen nothing can be confirmed: the holder must give up on its own within the TTL.
    await eventually(() => session.state === 'expired', {
      what: 'the session to be reported expired',
      timeoutMs: TTL_MS + 1000,
    });
    // (Bounded loosely: the local deadline is TTL × 0.99 after the last acknowledged send; timers may run late.)
    expect(states.get('expired')! - pausedAt).toBeLessThanOrEqual(TTL_MS + 1000);
    await expect(
      holder.txn({ compare: [], then: [{ op: 'put', key: 'lead/again', value: 'x', session }] }),
    ).rejects.toBeInstanceOf(SessionExpiredError);
    await sleep(TTL_MS);
    const n0 = hints.list.length;
    const resumedAt = Date.now();
    server.resume();

    // etcd's clock kept running while it was stopped: the lease is overdue, and is revoked on resume.
    await eventually(async () => (await observer.get('lead/h').catch(() => 'err')) === undefined, {
      what: "the overdue lease's key to vanish after the resume",
      timeoutMs: TTL_MS + EXPIRY_BOUND_MS,
    });
    // The watch went silent during the pause, was re-established, and said so.
    await eventually(() => hints.since(n0).some((h) => h.reason === 'resync'), {
      what: 'a resync hint after the resume',
      timeoutMs: REQUEST_TIMEOUT_MS * 3,
    });
    await eventually(() => hints.list.length > n0, { what: 'a hint after the resume', timeoutMs: 5000 });
    expect(Date.now() - resumedAt).toBeLessThan(15_000);
    // The stale holder's guarded write is refused.
    expect(await guardedWrite(holder, 'lead/h', token, 'stale')).toBe(false);
    expect(await observer.get('fenced')).toBeUndefined();
    await worksAgain(n);
  });

  it('server killed and restarted quickly: the session is kept, and the server confirms it', async () => {
    const n = ns();
    const holder = await open(n);
    const observer = await open(n);
    const session = await holder.openSession({ ttlMs: 6000 });
    const put = await holder.txn({ compare: [], then: [{ op: 'put', key: 'lead/h', value: 'h', session }] });
    const hints = new Hints();
    await observer.watch('lead/', hints.fn);
    const n0 = hints.list.length;
    await server.kill();
    await server.restart();
    // etcd persists leases and, on becoming leader again, gives each its full TTL back.
    await eventually(
      async () => {
        await session.keepAlive().catch(() => undefined);
        return (
          session.state === 'live' && (await observer.get('lead/h').catch(() => undefined))?.sessionId === session.id
        );
      },
      { what: 'the restarted server to confirm the session alive, with its key', timeoutMs: 10_000, intervalMs: 100 },
    );
    expect(session.state).toBe('live');
    expect(await guardedWrite(holder, 'lead/h', put.revision, 'still-leader')).toBe(true);
    await eventually(() => hints.since(n0).some((h) => h.reason === 'resync'), {
      what: 'a resync hint',
      timeoutMs: 10_000,
    });
    await session.close();
    expect(await observer.get('lead/h')).toBeUndefined();
    await worksAgain(n);
  });

  it('server killed and down past the TTL: the holder is told; the server expires the lease after restart', async () => {
    const n = ns();
    const holder = await open(n);
    const observer = await open(n);
    const session = await holder.openSession({ ttlMs: TTL_MS });
    const put = await holder.txn({ compare: [], then: [{ op: 'put', key: 'lead/h', value: 'h', session }] });
    const hints = new Hints();
    await observer.watch('lead/', hints.fn);
    const n0 = hints.list.length;
    await server.kill();
    await eventually(() => session.state === 'expired', {
      what: 'the session to be reported expired',
      timeoutMs: TTL_MS + 1000,
    });
    await server.restart();
    const restartedAt = Date.now();
    // The restored lease gets a fresh TTL, plus one election timeout (1 s by
    // default), when the restarted member becomes leader; nobody renews it, so
    // it ends then — unless the holder's best-effort revoke, sent when it gave
    // up on the session, reached the server first.
    const boundMs = TTL_MS + ELECTION_TIMEOUT_MS + EXPIRY_BOUND_MS;
    await eventually(async () => (await observer.get('lead/h').catch(() => 'err')) === undefined, {
      what: 'the leadership key to vanish',
      timeoutMs: boundMs + 2000,
      intervalMs: 50,
    });
    expect(Date.now() - restartedAt).toBeLessThanOrEqual(boundMs);
    await eventually(() => hints.since(n0).some((h) => h.reason === 'resync'), {
      what: 'a resync hint',
      timeoutMs: 10_000,
    });
    expect(await guardedWrite(holder, 'lead/h', put.revision, 'stale')).toBe(false);
    await expect(session.keepAlive()).rejects.toBeInstanceOf(SessionExpiredError);
    await worksAgain(n);
  });

  it('server rebuilt without its data: revisions would repeat, so the client refuses and expires its sessions', async () => {
    const n = ns();
    const holder = await open(n);
    const session = await holder.openSession({ ttlMs: 10_000 });
    for (let i = 0; i < 30; i++) await holder.txn({ compare: [], then: [{ op: 'put', key: `x${i}`, value: '1' }] });
    await holder.txn({ compare: [], then: [{ op: 'put', key: 'lead/h', value: 'h', session }] });
    await server.kill();
    rmSync(join(server.dataDir, 'data'), { recursive: true, force: true });
    await server.restart();
    // The layout marker is gone too, so a fresh client could not tell; this one remembers revisions.
    const err = await holder.range('').then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(CorruptDataError);
    expect((err as Error).message).toMatch(/went backwards/);
    expect(session.state).toBe('expired');
    await worksAgain(n);
  });

  describe('silent partition through a TCP proxy', () => {
    let proxy: TcpProxy;
    beforeAll(async () => {
      proxy = await startProxy({ host: server.host, port: server.port });
    });
    afterAll(async () => {
      await proxy?.close();
    });

    it('the cut-off holder expires itself before etcd drops its keys; after healing, everything works', async () => {
      const n = ns();
      const holder = await open(n, `etcd://127.0.0.1:${proxy.port}`);
      const observer = await open(n);
      const session = await holder.openSession({ ttlMs: TTL_MS });
      const states = track(session);
      const put = await holder.txn({ compare: [], then: [{ op: 'put', key: 'lead/h', value: 'h', session }] });
      const holderHints = new Hints();
      await holder.watch('lead/', holderHints.fn);
      const observerHints = new Hints();
      await observer.watch('lead/', observerHints.fn);

      proxy.setMode('blackhole');
      const cutAt = Date.now();
      let vanishedAt = 0;
      let vanishedAtClockMs = 0;
      await eventually(
        async () => {
          if ((await observer.get('lead/h')) !== undefined) return false;
          vanishedAt = Date.now();
          vanishedAtClockMs = holder.clock.now();
          return true;
        },
        { what: "the cut-off holder's key to vanish", timeoutMs: TTL_MS + EXPIRY_BOUND_MS + 2000, intervalMs: 20 },
      );
      expect(vanishedAt - cutAt).toBeLessThanOrEqual(TTL_MS + EXPIRY_BOUND_MS);
      // Self-fencing: etcd dropped the keys only after the holder's own safety
      // deadline, so the holder stopped before anyone else could take over.
      expect(vanishedAtClockMs).toBeGreaterThanOrEqual(session.safeUntilMs);
      await eventually(() => session.state === 'expired', {
        what: "the holder's session to be reported expired",
        timeoutMs: 1000,
      });
      expect(states.get('expired')! - cutAt).toBeLessThanOrEqual(TTL_MS + 1000);
      await eventually(() => observerHints.list.length > 0, {
        what: 'a hint to the observer that the key vanished',
        timeoutMs: EXPIRY_BOUND_MS,
      });

      // A new leader takes over and writes.
      const next = await observer.openSession({ ttlMs: TTL_MS });
      const taken = await observer.txn({
        compare: [{ key: 'lead/h', target: 'exists', exists: false }],
        then: [{ op: 'put', key: 'lead/h', value: 'o', session: next }],
      });
      expect(taken.succeeded).toBe(true);
      // The stale holder, still cut off, cannot even get an answer; the request is bounded.
      const started = Date.now();
      const err = await guardedWrite(holder, 'lead/h', put.revision, 'stale').then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(StoreUnavailableError);
      expect(Date.now() - started).toBeLessThan(REQUEST_TIMEOUT_MS + 1000);

      const n0 = holderHints.list.length;
      proxy.setMode('pass');
      // After healing: the holder's watch resyncs, and its fenced write is refused.
      await eventually(() => holderHints.since(n0).some((h) => h.reason === 'resync'), {
        what: "a resync hint of the holder's watch after healing",
        timeoutMs: 15_000,
      });
      await eventually(
        async () => {
          try {
            return (await guardedWrite(holder, 'lead/h', put.revision, 'stale')) === false;
          } catch {
            return false;
          }
        },
        { what: "the stale holder's guarded write to be refused", timeoutMs: 15_000, intervalMs: 200 },
      );
      expect(await observer.get('fenced')).toBeUndefined();
      // The healed client works again, through the same proxy.
      const fresh = await holder.openSession({ ttlMs: TTL_MS });
      expect(fresh.state).toBe('live');
      await fresh.close();
      await next.close();
      await worksAgain(n);
    });
  });
});
