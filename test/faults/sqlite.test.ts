/**
 * SQLite fault tests with real processes sharing one database file. An
 * embedded file has no server to pause or cut off; the faults that matter are
 * the clients': paused past the TTL, killed -9 (also inside a write
 * transaction), stopped while holding the write lock, and racing each other.
 * Every wait is bounded; assertions are about behaviour, not speed.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createSqliteStore, type SqliteStore } from '../../src/backends/sqlite/index.js';
import type { WatchHint } from '../../src/store/contract.js';
import { Election } from '../../src/store/election.js';
import { SessionExpiredError, StoreUnavailableError } from '../../src/errors.js';
import { spawnClient, type ClientProcess } from '../conformance/clients.js';
import { eventually, sleep } from '../harness/wait.js';

const CHILD = fileURLToPath(new URL('./sqlite-child.ts', import.meta.url));
const TTL_MS = 1000;
/** Keys of a dead session vanish within TTL + this (one 25 ms poll plus slack for a loaded machine). */
const EXPIRY_BOUND_MS = 300;

interface Child {
  readonly proc: ChildProcess;
  waitFor(pred: (msg: Record<string, unknown>) => boolean, timeoutMs: number): Promise<Record<string, unknown>>;
  exited(timeoutMs: number): Promise<boolean>;
}

function spawnChild(args: string[]): Child {
  const proc = spawn(process.execPath, ['--import', 'tsx', CHILD, ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
  const seen: Record<string, unknown>[] = [];
  const waiters = new Set<() => void>();
  createInterface({ input: proc.stdout! }).on('line', (line) => {
    try {
      seen.push(JSON.parse(line) as Record<string, unknown>);
    } catch {
      return;
    }
    for (const w of [...waiters]) w();
  });
  let exitedFlag = false;
  proc.once('exit', () => {
    exitedFlag = true;
    for (const w of [...waiters]) w();
  });
  return {
    proc,
    waitFor(pred, timeoutMs) {
      return new Promise((resolve, reject) => {
        const check = (): void => {
          const m = seen.find(pred);
          if (m !== undefined) {
            done();
            resolve(m);
          } else if (exitedFlag) {
            done();
            reject(new Error(`child exited before the expected message (${args.join(' ')})`));
          }
        };
        const t = setTimeout(() => {
          done();
          reject(new Error(`no expected message from child within ${timeoutMs} ms (${args.join(' ')})`));
        }, timeoutMs);
        const done = (): void => {
          clearTimeout(t);
          waiters.delete(check);
        };
        waiters.add(check);
        check();
      });
    },
    exited(timeoutMs) {
      if (exitedFlag) return Promise.resolve(true);
      return new Promise((resolve) => {
        const t = setTimeout(() => resolve(false), timeoutMs);
        proc.once('exit', () => {
          clearTimeout(t);
          resolve(true);
        });
      });
    },
  };
}

describe('sqlite faults (child processes on one file)', () => {
  let dir: string;
  let path: string;
  const stores: SqliteStore[] = [];
  const children: Child[] = [];
  const clients: ClientProcess[] = [];
  let nsSeq = 0;

  const open = async (namespace: string, requestTimeoutMs = 5000): Promise<SqliteStore> => {
    const s = await createSqliteStore({ path, namespace, requestTimeoutMs });
    stores.push(s);
    return s;
  };
  const child = (args: string[]): Child => {
    const c = spawnChild(args);
    children.push(c);
    return c;
  };
  const integrityOk = (): boolean => {
    const raw = new Database(path, { readonly: true });
    try {
      return raw.pragma('integrity_check', { simple: true }) === 'ok';
    } finally {
      raw.close();
    }
  };

  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'rebalancer-sqlite-faults-'));
    path = join(dir, 'store.db');
  });

  afterEach(async () => {
    for (const c of clients.splice(0)) await c.close().catch(() => undefined);
    for (const c of children.splice(0)) {
      c.proc.kill('SIGCONT');
      c.proc.kill('SIGKILL');
      await c.exited(5000);
    }
    for (const s of stores.splice(0)) await s.close();
  });

  afterAll(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  it('a client paused past its TTL loses its session; a watcher in another process hears; resumed, it learns and is fenced', async () => {
    const ns = `pause${++nsSeq}`;
    const observer = await open(ns);
    const c = await spawnClient(`sqlite:${path}`, ns);
    clients.push(c);
    const opened = await c.request({ cmd: 'open', ttlMs: TTL_MS });
    expect(opened.ok).toBe(true);
    const led = await c.request({ cmd: 'campaign', prefix: 'lead/', value: 'a' });
    expect(led.ok).toBe(true);
    const tokenA = led.ok ? (led.token ?? 0) : 0;
    expect(await c.request({ cmd: 'guardedWrite', key: 'fenced', value: 'a1' })).toMatchObject({ succeeded: true });
    const hints: WatchHint[] = [];
    const w = await observer.watch('lead/', (h) => hints.push(h));

    const pausedAt = Date.now();
    c.pause();
    let goneAfterMs: number;
    try {
      await eventually(async () => (await observer.range('lead/')).kvs.length === 0, {
        what: "the paused holder's leadership key to vanish",
        timeoutMs: TTL_MS + 5000,
      });
      goneAfterMs = Date.now() - pausedAt;
      await eventually(() => hints.length > 0, { what: 'a hint that the key vanished', timeoutMs: 2000 });
      // A new leader, while the old one is still frozen.
      const session = await observer.openSession({ ttlMs: TTL_MS });
      const b = await new Election(observer, { prefix: 'lead/' }).campaign(session, 'b', AbortSignal.timeout(5000));
      expect(b.token).toBeGreaterThan(tokenA);
      expect(
        (await observer.txn({ compare: [b.guard], then: [{ op: 'put', key: 'fenced', value: 'b1' }] })).succeeded,
      ).toBe(true);
    } finally {
      c.resume();
    }
    expect(goneAfterMs).toBeLessThanOrEqual(TTL_MS + EXPIRY_BOUND_MS);
    // Resumed: it learns its session is gone, and its stale guarded write is refused by the store.
    await eventually(
      async () => {
        const r = await c.request({ cmd: 'sessionState' });
        return r.ok && r.state === 'expired';
      },
      { what: 'the resumed client to report its session expired', timeoutMs: 5000 },
    );
    const stale = await c.request({ cmd: 'guardedWrite', key: 'fenced', value: 'a2' });
    expect(stale).toMatchObject({ ok: true, succeeded: false });
    expect((await observer.get('fenced'))?.value).toBe('b1');
    // And it can start over.
    expect((await c.request({ cmd: 'open', ttlMs: TTL_MS })).ok).toBe(true);
    expect(await c.request({ cmd: 'put', key: 'again', value: 'x', attach: true })).toMatchObject({ ok: true });
    expect((await observer.get('again'))?.sessionId).toBeDefined();
    await w.close();
  });

  it('a client killed -9 inside a write transaction leaves the file unlocked and its write unapplied', async () => {
    const s = await open('faults', 400);
    await s.txn({ compare: [], then: [{ op: 'put', key: 'before', value: '1' }] });
    const holder = child(['hold', path, '60000']);
    await holder.waitFor((m) => m['holding'] === true, 20_000);
    // While it holds the write lock: writes give up within requestTimeoutMs, without applying; reads still work.
    const err = await s.txn({ compare: [], then: [{ op: 'put', key: 'blocked', value: '1' }] }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(StoreUnavailableError);
    expect((err as StoreUnavailableError).outcome).toBe('not-applied');
    expect((await s.get('before'))?.value).toBe('1');
    holder.proc.kill('SIGKILL');
    expect(await holder.exited(5000)).toBe(true);
    const w = await s.txn({ compare: [], then: [{ op: 'put', key: 'after', value: '1' }] });
    expect(w.succeeded).toBe(true);
    expect(await s.get('blocked')).toBeUndefined();
    expect(await s.get('uncommitted')).toBeUndefined();
    expect(integrityOk()).toBe(true);
  });

  it('a client stopped while holding the write lock: others fail safe (self-fence), then recover', async () => {
    const ns = `stopped${++nsSeq}`;
    const s = await open(ns, 300);
    const observer = await open(ns, 300);
    const session = await s.openSession({ ttlMs: TTL_MS });
    await s.txn({ compare: [], then: [{ op: 'put', key: 'h/held', value: 'x', session }] });
    const hints: WatchHint[] = [];
    await observer.watch('h/', (h) => hints.push(h));
    // It holds the lock for 1.5 s of wall time, and is frozen (SIGSTOP) as soon as it has it.
    const holder = child(['hold', path, '1500']);
    await holder.waitFor((m) => m['holding'] === true, 20_000);
    holder.proc.kill('SIGSTOP');
    const stoppedAt = Date.now();
    try {
      // No keep-alive can be written: the session reaches its safety deadline and ends locally.
      const end = await Promise.race([session.ended, sleep(TTL_MS * 3).then(() => 'timeout' as const)]);
      expect(end).toMatchObject({ state: 'expired' });
      expect(Date.now() - stoppedAt).toBeLessThanOrEqual(TTL_MS + 500);
      const err = await s.txn({ compare: [], then: [{ op: 'put', key: 'h/x', value: '1' }] }).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(StoreUnavailableError);
      // Nobody can reap while the lock is held, but reads do not wait for it, and
      // already hide the keys of a session past its expiry.
      await eventually(async () => (await observer.get('h/held')) === undefined, {
        what: 'the held key to vanish',
        timeoutMs: 1000,
      });
      expect(Date.now() - stoppedAt).toBeLessThanOrEqual(TTL_MS + EXPIRY_BOUND_MS);
    } finally {
      holder.proc.kill('SIGCONT');
    }
    expect(await holder.exited(10_000)).toBe(true);
    // The lock is free again: the expired session is reaped, the watcher hears, new sessions work.
    await eventually(async () => (await observer.get('h/held')) === undefined, {
      what: 'the held key to vanish',
      timeoutMs: 3000,
    });
    await eventually(() => hints.length > 0, { what: 'a hint that the key vanished', timeoutMs: 3000 });
    const again = await s.openSession({ ttlMs: TTL_MS });
    expect(
      (await s.txn({ compare: [], then: [{ op: 'put', key: 'h/new', value: '1', session: again }] })).succeeded,
    ).toBe(true);
    const stale = await s.txn({ compare: [], then: [{ op: 'put', key: 'h/stale', value: '1', session }] }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(stale).toBeInstanceOf(SessionExpiredError);
  });

  it('processes creating a new database file at the same moment all succeed', async () => {
    const fresh = join(dir, 'fresh.db');
    const go = join(dir, 'fresh.go');
    const openers = [0, 1, 2, 3].map((i) => child(['open', fresh, `p${i}`, go]));
    await Promise.all(openers.map((c) => c.waitFor((m) => m['ready'] === true, 30_000)));
    writeFileSync(go, '');
    await Promise.all(openers.map((c) => c.waitFor((m) => m['done'] === true, 30_000)));
    const s = await createSqliteStore({ path: fresh, namespace: 'opened' });
    stores.push(s);
    expect((await s.range('')).kvs.map((kv) => kv.key)).toEqual(['p0', 'p1', 'p2', 'p3']);
  });

  it('two processes hammering compare-and-swap increments lose no update', async () => {
    const ns = `cas${++nsSeq}`;
    const s = await open(ns);
    await s.txn({ compare: [], then: [{ op: 'put', key: 'counter', value: '0' }] });
    // This process only watches: every hint comes from polling the other processes' commits.
    const hints: WatchHint[] = [];
    await s.watch('counter', (h) => hints.push(h));
    const each = 200;
    const go = join(dir, `${ns}.go`);
    const workers = [child(['cas', path, ns, String(each), go]), child(['cas', path, ns, String(each), go])];
    // Both start at the same moment, once both have loaded.
    await Promise.all(workers.map((w) => w.waitFor((m) => m['ready'] === true, 30_000)));
    writeFileSync(go, '');
    const results = await Promise.all(workers.map((w) => w.waitFor((m) => m['done'] === true, 90_000)));
    const counter = await s.get('counter');
    expect(counter?.value).toBe(String(2 * each));
    expect(counter?.version).toBe(2 * each + 1);
    const last = counter?.modRevision ?? 0;
    await eventually(() => hints.some((h) => h.revision >= last), {
      what: 'a hint of the last write',
      timeoutMs: 2000,
    });
    // Not a requirement, but the test is only meaningful if they actually raced.
    expect(results.reduce((n, r) => n + Number(r['conflicts']), 0)).toBeGreaterThan(0);
  }, 120_000);

  it('clients killed -9 at random moments of heavy writing never corrupt the file or block others', async () => {
    const ns = `churn${++nsSeq}`;
    const s = await open(ns);
    for (let round = 0; round < 3; round++) {
      const c = child(['churn', path, ns]);
      await c.waitFor((m) => m['ready'] === true, 20_000);
      await sleep(50 + Math.random() * 250);
      c.proc.kill('SIGKILL');
      expect(await c.exited(5000)).toBe(true);
      const w = await s.txn({ compare: [], then: [{ op: 'put', key: `round/${round}`, value: 'ok' }] });
      expect(w.succeeded).toBe(true);
      expect(integrityOk()).toBe(true);
    }
    // Every killed client's session expires and its keys vanish.
    await eventually(async () => (await s.range('churn/')).kvs.every((kv) => kv.sessionId === undefined), {
      what: "the killed clients' keys to vanish",
      timeoutMs: TTL_MS + EXPIRY_BOUND_MS + 2000,
    });
    expect((await s.range('round/')).kvs).toHaveLength(3);
  }, 60_000);
});
