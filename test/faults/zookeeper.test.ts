/**
 * ZooKeeper under faults, on a private server: paused past the session TTL,
 * killed and restarted on the same data, and a client cut off by a silent
 * partition (the case node-zookeeper-client alone never notices).
 *
 * Asserted: sessions end up expired or confirmed alive, never silently dead;
 * the client is told; a stale holder's guarded write fails; afterwards new
 * sessions, reads, transactions and watches work, and watches resync.
 */
import { StoreUnavailableError } from '../../src/errors.js';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createZookeeperStore, type ZookeeperStore } from '../../src/backends/zookeeper/index.js';
import type { Session, Store, WatchHint } from '../../src/store/contract.js';
import { Election } from '../../src/store/election.js';
import { startProxy, type TcpProxy } from '../harness/proxy.js';
import { startZookeeper, type ServerHandle } from '../harness/servers.js';
import { eventually, sleep } from '../harness/wait.js';

const TTL_MS = 2000;
/** Server expiry granularity (tickTime 500 ms) plus processing and polling. */
const EXPIRY_BOUND_MS = 1000;

class HintLog {
  readonly hints: (WatchHint & { atMs: number })[] = [];
  readonly fn = (h: WatchHint): void => void this.hints.push({ ...h, atMs: Date.now() });
  since(ms: number, reason?: WatchHint['reason']): number {
    return this.hints.filter((h) => h.atMs >= ms && (reason === undefined || h.reason === reason)).length;
  }
}

describe('zookeeper faults', () => {
  let server: ServerHandle;
  const stores: Store[] = [];
  const ns = (): string => `f${randomBytes(4).toString('hex')}`;
  const open = async (namespace: string, port = server.port): Promise<ZookeeperStore> => {
    const s = await createZookeeperStore({
      connectString: `127.0.0.1:${port}`,
      namespace,
      requestTimeoutMs: 2000,
      // Short, so the store's own session also expires during the faults below.
      connectionSessionTimeoutMs: TTL_MS,
    });
    stores.push(s);
    return s;
  };

  beforeAll(async () => {
    server = await startZookeeper({ tickTimeMs: 500 });
  });
  afterAll(async () => {
    server?.resume();
    for (const s of stores) await s.close().catch(() => undefined);
    await server?.stop();
  });

  /** A fresh store proves the server works again; then the survivor's own calls must work too. */
  async function assertWorksAgain(s: Store, observer: Store, log: HintLog, healedAtMs: number): Promise<void> {
    await eventually(async () => (await s.range('')).revision > 0, {
      what: 'reads to work again after healing',
      timeoutMs: 15_000,
      intervalMs: 200,
    });
    const fresh = await s.openSession({ ttlMs: TTL_MS });
    expect(fresh.state).toBe('live');
    const r = await s.txn({ compare: [], then: [{ op: 'put', key: 'after/x', value: '1', session: fresh }] });
    expect((await observer.get('after/x'))?.sessionId).toBe(fresh.id);
    // The watch came back on its own and says so.
    await eventually(() => log.since(healedAtMs - 1000, 'resync') > 0, {
      what: 'a resync hint after healing',
      timeoutMs: 15_000,
    });
    const w = await observer.txn({ compare: [], then: [{ op: 'put', key: 'lead/zz-after', value: '1' }] });
    await eventually(() => log.hints.some((h) => h.revision >= w.revision), {
      what: 'a hint of the write after healing',
      timeoutMs: 5000,
    });
    expect(r.revision).toBeGreaterThan(0);
    await fresh.close();
  }

  it('server paused past the TTL: the holder is told, its key vanishes, its stale write fails', async () => {
    const name = ns();
    const a = await open(name);
    const b = await open(name);
    const session = await a.openSession({ ttlMs: TTL_MS });
    const lead = await new Election(a, { prefix: 'lead/' }).campaign(session, 'a');
    expect((await a.txn({ compare: [lead.guard], then: [{ op: 'put', key: 'fenced', value: 'a1' }] })).succeeded).toBe(
      true,
    );
    const log = new HintLog();
    await a.watch('lead/', log.fn);
    let ended = false;
    void session.ended.then(() => (ended = true));

    server.pause();
    await sleep(TTL_MS * 2);
    // Self-fencing: without answers, the session is over locally before the server can act.
    expect(session.state).toBe('expired');
    expect(ended).toBe(true);
    server.resume();
    const resumedAt = Date.now();

    await eventually(async () => (await b.get(lead.key)) === undefined, {
      what: 'the leadership key to vanish',
      timeoutMs: TTL_MS + EXPIRY_BOUND_MS + 5000,
    });
    // Right after the resume the client may still be reconnecting: retry "unavailable" answers, but the
    // stale write must never succeed.
    let stale: { succeeded: boolean } | undefined;
    for (let i = 0; i < 10 && stale === undefined; i++) {
      stale = await a
        .txn({ compare: [lead.guard], then: [{ op: 'put', key: 'fenced', value: 'a2' }] })
        .catch((err: unknown) => {
          if (err instanceof StoreUnavailableError) return undefined;
          throw err;
        });
    }
    expect(stale?.succeeded).toBe(false);
    await expect(
      a.txn({ compare: [], then: [{ op: 'put', key: 'lead/again', value: 'x', session }] }),
    ).rejects.toMatchObject({ code: 'SESSION_EXPIRED' });
    expect((await b.get('fenced'))?.value).toBe('a1');
    await assertWorksAgain(a, b, log, resumedAt);
  }, 60_000);

  it('server killed and restarted on the same data: a session within its TTL is kept, watches resync', async () => {
    const name = ns();
    const a = await open(name);
    const b = await open(name);
    const session = await a.openSession({ ttlMs: 8000 });
    await a.txn({ compare: [], then: [{ op: 'put', key: 'lead/held', value: 'x', session }] });
    const log = new HintLog();
    await a.watch('lead/', log.fn);

    await server.kill();
    await server.restart();
    const restartedAt = Date.now();

    // Converges to one honest answer: kept (the server confirms it) or expired (and the key goes).
    await eventually(
      async () => {
        if (session.state === 'expired') return true;
        await session.keepAlive();
        return session.state === 'live' && (await b.get('lead/held'))?.sessionId === session.id;
      },
      { what: 'the session to be either confirmed alive with its key, or expired', timeoutMs: 20_000 },
    );
    if (session.state === 'expired') {
      await eventually(async () => (await b.get('lead/held')) === undefined, {
        what: "the expired session's key to vanish",
        timeoutMs: 8000 + EXPIRY_BOUND_MS + 5000,
      });
    } else {
      // ZooKeeper persists sessions: this one survived the restart, with its key.
      expect((await b.get('lead/held'))?.sessionId).toBe(session.id);
    }
    await assertWorksAgain(a, b, log, restartedAt);
    await session.close();
  }, 60_000);

  it('server down longer than the TTL: the session ends everywhere', async () => {
    const name = ns();
    const a = await open(name);
    const b = await open(name);
    const session: Session = await a.openSession({ ttlMs: TTL_MS });
    await a.txn({ compare: [], then: [{ op: 'put', key: 'lead/held', value: 'x', session }] });
    const log = new HintLog();
    await a.watch('lead/', log.fn);

    await server.kill();
    await sleep(TTL_MS * 1.5);
    expect(session.state).toBe('expired');
    await server.restart();
    const restartedAt = Date.now();
    // The server restores the session from its log with a fresh timeout, then expires it.
    await eventually(async () => (await b.get('lead/held')) === undefined, {
      what: "the restored session's key to vanish",
      timeoutMs: TTL_MS + EXPIRY_BOUND_MS + 10_000,
    });
    await assertWorksAgain(a, b, log, restartedAt);
  }, 60_000);

  it('server down past a long TTL: the holder ends its restored session at once when the server is back', async () => {
    const ttlMs = 6000;
    const name = ns();
    const a = await open(name);
    const b = await open(name);
    const session: Session = await a.openSession({ ttlMs });
    await a.txn({ compare: [], then: [{ op: 'put', key: 'lead/held', value: 'x', session }] });
    // Not before the session ended here: ending a live session is close()'s business.
    expect(await session.endOnServer()).toBe(false);

    await server.kill();
    await eventually(() => session.state === 'expired', { what: 'the session to expire locally', timeoutMs: 10_000 });
    // The server is down: nothing can be confirmed.
    expect(await session.endOnServer()).toBe(false);
    await server.restart();
    const restartedAt = Date.now();
    // The server restores the session with a fresh timeout (6 s); its holder ends it on the server instead.
    await eventually(() => session.endOnServer(), { what: 'the server to confirm the end', timeoutMs: 10_000 });
    expect(await b.get('lead/held')).toBeUndefined();
    expect(Date.now() - restartedAt).toBeLessThan(ttlMs / 2);
    expect(await session.endOnServer()).toBe(true);
  }, 60_000);

  describe('silent partition', () => {
    let proxy: TcpProxy;
    beforeAll(async () => {
      proxy = await startProxy({ host: '127.0.0.1', port: server.port });
    });
    afterAll(async () => {
      await proxy?.close();
    });

    // Healed without a reset: the connections stay open and silent, which the
    // driver alone never notices. With a reset: the usual end of a partition.
    it.each([
      ['connections left open', false],
      ['connections reset', true],
    ])(
      'client blackholed past the TTL learns its session is gone; the stale holder is fenced (%s)',
      async (_, reset) => {
        const name = ns();
        const a = await open(name, proxy.port);
        const b = await open(name);
        const session = await a.openSession({ ttlMs: TTL_MS });
        const electionA = new Election(a, { prefix: 'lead/' });
        const lead = await electionA.campaign(session, 'a');
        expect(
          (await a.txn({ compare: [lead.guard], then: [{ op: 'put', key: 'fenced', value: 'a1' }] })).succeeded,
        ).toBe(true);
        const log = new HintLog();
        await a.watch('lead/', log.fn);
        const observerLog = new HintLog();
        await b.watch('lead/', observerLog.fn);

        proxy.setMode('blackhole');
        const cutAt = Date.now();
        // The holder stops by its own deadline, within the TTL.
        await eventually(() => session.state === 'expired', {
          what: 'the session to be reported expired',
          timeoutMs: TTL_MS + 500,
          intervalMs: 20,
        });
        expect(Date.now() - cutAt).toBeLessThanOrEqual(TTL_MS + 500);
        // The server expires it too: the key goes and other clients hear of it.
        await eventually(async () => (await b.get(lead.key)) === undefined, {
          what: 'the leadership key to vanish',
          timeoutMs: TTL_MS + EXPIRY_BOUND_MS + 2000,
        });
        // The hint follows the deletion by a re-arm round trip.
        await eventually(() => observerLog.since(cutAt) > 0, {
          what: 'a hint to the observer after the cut',
          timeoutMs: EXPIRY_BOUND_MS,
        });
        // A new leader takes over with a larger token and writes.
        const sb = await b.openSession({ ttlMs: TTL_MS });
        const leadB = await new Election(b, { prefix: 'lead/' }).campaign(sb, 'b', AbortSignal.timeout(10_000));
        expect(leadB.token).toBeGreaterThan(lead.token);
        expect(
          (await b.txn({ compare: [leadB.guard], then: [{ op: 'put', key: 'fenced', value: 'b1' }] })).succeeded,
        ).toBe(true);
        // While cut off, the holder's guarded write cannot succeed (it times out or fails).
        const during = await a
          .txn({ compare: [lead.guard], then: [{ op: 'put', key: 'fenced', value: 'a-cut' }] })
          .then(
            (r) => (r.succeeded ? 'applied' : 'refused'),
            (e: { code?: string }) => e.code ?? 'error',
          );
        expect(during).not.toBe('applied');
        await sleep(Math.max(0, cutAt + TTL_MS * 2.5 - Date.now()));

        proxy.setMode('pass');
        if (reset) proxy.resetAll();
        const healedAt = Date.now();
        // The stale holder's guarded write fails after healing.
        await eventually(
          async () => {
            const r = await a.txn({ compare: [lead.guard], then: [{ op: 'put', key: 'fenced', value: 'a2' }] });
            return !r.succeeded;
          },
          { what: "the stale holder's guarded write to be refused", timeoutMs: 15_000 },
        );
        expect((await b.get('fenced'))?.value).toBe('b1');
        expect((await a.get('fenced'))?.value).toBe('b1');
        await assertWorksAgain(a, b, log, healedAt);
        await sb.close();
      },
      60_000,
    );
  });
});
