/**
 * The groups bench's `stall` section: the longest store stall a member rides out without fencing, per backend, as a
 * ratio of the session TTL.
 *
 * The store is stalled for real: the private server's process group is stopped (SIGSTOP) and continued, or, for
 * SQLite (no server), another connection holds the file's write lock. One member (the membership module every
 * runtime shares, with the groups defaults: margin TTL/5) is watched; a trial fails if it fenced at any time from the
 * stall's start until 0.7 TTL after its end, or lost its session. Two phases:
 *  - `after ack`: the stall starts right after a keep-alive was acknowledged (the most it can ride out:
 *    TTL × (1 − drift) − margin − one round trip);
 *  - `catches a keep-alive`: the stall starts just before the next keep-alive is due, so that one is caught in it
 *    (the least: one beat, TTL/5, less).
 * Each is a short bisection over the stall length, so the figure is ± one step.
 */
import Database from 'better-sqlite3';
import { Membership } from '../src/runtime/membership.js';
import type { Store } from '../src/store/contract.js';
import { openStore } from '../src/store/open.js';
import { startEtcd, startPostgres, startRedis, startZookeeper, type ServerHandle } from '../test/harness/servers.js';
import { round } from './stats.js';

export const STALL_TTL_MS = 1000;
/** etcd grants no lease shorter than its minimum (1.5 × election timeout, 1.5 s by default): 2 s there. */
const ttlFor = (backend: string): number => (backend === 'etcd' ? 2000 : STALL_TTL_MS);
const DRIFT = 0.01;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export interface StallPhaseResult {
  /** Longest stall survived, over the TTL (0 when even the shortest tried was not). */
  readonly survivedRatio: number;
  /** Shortest stall that fenced, over the TTL (undefined when none did). */
  readonly fencedRatio: number | undefined;
  /** What the schedule promises for this phase, over the TTL (the round trip not counted). */
  readonly boundRatio: number;
  readonly trials: readonly { ratio: number; fenced: boolean; lost: boolean; fencedAfter: boolean }[];
  /** Trials in which the member fenced (again) after the store had answered: what keep-alives from the deadline end. */
  readonly fencedAfterResume: number;
}

export interface StallResult {
  readonly ttlMs: number;
  readonly afterAck: StallPhaseResult;
  readonly catchesKeepAlive: StallPhaseResult;
  readonly totalMs: number;
}

interface Staller {
  readonly url: string;
  stall(ms: number): Promise<void>;
  close(): Promise<void>;
}

async function staller(name: string, dir: string): Promise<Staller> {
  if (name === 'sqlite') {
    const path = `${dir}/stall.db`;
    return {
      url: `sqlite:${path}`,
      async stall(ms) {
        const db = new Database(path);
        try {
          db.exec('BEGIN EXCLUSIVE');
          await sleep(ms);
          db.exec('COMMIT');
        } finally {
          db.close();
        }
      },
      close: async () => undefined,
    };
  }
  const start: Record<string, () => Promise<ServerHandle>> = {
    postgres: startPostgres,
    redis: startRedis,
    etcd: startEtcd,
    zookeeper: startZookeeper,
  };
  const starter = start[name];
  if (starter === undefined) throw new Error(`unknown backend ${name}`);
  const s = await starter();
  return {
    url: s.url,
    async stall(ms) {
      s.pause();
      try {
        await sleep(ms);
      } finally {
        s.resume();
      }
    },
    close: () => s.stop(),
  };
}

class Watched {
  fences = 0;
  lastFenceAt = 0;
  losses = 0;
  readonly m: Membership;

  constructor(
    readonly store: Store,
    readonly ttlMs: number,
  ) {
    const TTL = ttlMs;
    this.m = new Membership(
      {
        store,
        clock: store.clock,
        scope: 'stall bench',
        nodeId: 'n1',
        memberKey: 'stall/members/n1',
        electionPrefix: undefined,
        electionValue: 'n1',
        sessionTtlMs: TTL,
        selfFenceMarginMs: TTL / 5,
        reconcileIntervalMs: 250,
        joinTimeoutMs: 3 * TTL,
        selfFencing: true,
        record: () => ({ value: '{}' }),
      },
      {
        joined: () => undefined,
        fenced: () => {
          this.fences++;
          this.lastFenceAt = performance.now();
        },
        unfenced: () => undefined,
        sessionLost: () => void this.losses++,
        elected: () => undefined,
        leadershipLost: () => undefined,
        kick: () => undefined,
        tick: () => undefined,
        error: () => undefined,
        idTaken: () => undefined,
      },
    );
  }

  /** Resolves right after the next acknowledged keep-alive, with its send time on the store's clock. */
  async nextAck(): Promise<number> {
    const TTL = this.ttlMs;
    const s = this.m.session;
    if (s === undefined) throw new Error('no session');
    const before = s.safeUntilMs;
    const giveUp = Date.now() + 3 * TTL;
    while (s.safeUntilMs <= before) {
      if (Date.now() > giveUp) throw new Error('no keep-alive acknowledged within 3 TTL');
      await new Promise((r) => setImmediate(r));
    }
    return s.safeUntilMs - TTL * (1 - DRIFT);
  }

  /** Until the member acts again (after a fence or a rejoin), and a little longer for its new session to settle. */
  async settled(): Promise<void> {
    const TTL = this.ttlMs;
    const giveUp = Date.now() + 10 * TTL;
    let waited = false;
    while (!(this.m.ownsNow() && this.m.state === 'active' && this.m.session?.state === 'live')) {
      if (Date.now() > giveUp) throw new Error('the member did not recover within 10 TTL');
      waited = true;
      await sleep(20);
    }
    if (waited) await sleep(TTL / 2);
  }
}

async function trial(
  w: Watched,
  st: Staller,
  phase: 'afterAck' | 'catches',
  ratio: number,
): Promise<{ fenced: boolean; lost: boolean; fencedAfter: boolean }> {
  const TTL = w.ttlMs;
  await w.settled();
  const sentAt = await w.nextAck();
  // Just before the next keep-alive is due (a beat after the last acknowledged send).
  if (phase === 'catches') await sleep(Math.max(0, sentAt + TTL / 5 - 30 - w.store.clock.now()));
  const fences = w.fences;
  const losses = w.losses;
  await st.stall(ratio * TTL);
  const resumedAt = performance.now();
  // A fence caused by the stall comes at the latest a beat plus the margin after it (a keep-alive caught in it
  // extends the deadline from its send, before the stall).
  await sleep(0.7 * TTL);
  return {
    fenced: w.fences > fences,
    lost: w.losses > losses,
    // 20 ms for the first answer after the resume to arrive.
    fencedAfter: w.fences > fences && w.lastFenceAt > resumedAt + 20,
  };
}

async function bisect(
  w: Watched,
  st: Staller,
  phase: 'afterAck' | 'catches',
  steps: number,
  boundRatio: number,
): Promise<StallPhaseResult> {
  let lo = 0.1;
  let hi = 1.0;
  let survived = 0;
  let fencedAt: number | undefined;
  const trials: { ratio: number; fenced: boolean; lost: boolean; fencedAfter: boolean }[] = [];
  // Start at the bound: one step tells whether the promise holds, the rest refine.
  let ratio = round(boundRatio - 0.03, 3);
  for (let i = 0; i < steps; i++) {
    const r = await trial(w, st, phase, ratio);
    trials.push({ ratio, ...r });
    if (r.fenced || r.lost) {
      hi = ratio;
      fencedAt = fencedAt === undefined ? ratio : Math.min(fencedAt, ratio);
    } else {
      lo = ratio;
      survived = Math.max(survived, ratio);
    }
    ratio = round((lo + hi) / 2, 3);
  }
  return {
    survivedRatio: survived,
    fencedRatio: fencedAt,
    boundRatio: round(boundRatio, 3),
    trials,
    fencedAfterResume: trials.filter((t) => t.fencedAfter).length,
  };
}

export async function stallSection(name: string, dir: string, steps: number): Promise<StallResult> {
  const t0 = Date.now();
  const TTL = ttlFor(name);
  const st = await staller(name, dir);
  try {
    const store = await openStore(st.url, { namespace: 'stallbench', maxSessionTtlMs: TTL });
    const w = new Watched(store, TTL);
    try {
      await w.m.join();
      const granted = w.m.session?.ttlMs;
      if (granted !== TTL) throw new Error(`${name} granted a TTL of ${granted} ms instead of ${TTL} ms`);
      const usable = 1 - DRIFT - 1 / 5;
      const afterAck = await bisect(w, st, 'afterAck', steps, usable);
      const catchesKeepAlive = await bisect(w, st, 'catches', steps, usable - 1 / 5);
      return { ttlMs: TTL, afterAck, catchesKeepAlive, totalMs: Date.now() - t0 };
    } finally {
      await w.m.close().catch(() => undefined);
      await store.close().catch(() => undefined);
    }
  } finally {
    await st.close();
  }
}
