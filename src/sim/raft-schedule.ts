/**
 * The Raft simulation's fault schedule (issue 13, item 5): drawn from the seed before the run (never from what the
 * run does, and never from the mutant: a seed is the same schedule with or without one), then applied at its times.
 * A target named 'leader' is resolved when the fault fires (the leader then, as the scheduler would see it).
 *
 * Faults: message loss/duplication/delay rates; partitions (one node cut off both ways, one direction between two
 * nodes, the leader's outgoing messages); crash + restart of one node; a power loss of every node at once (what a
 * write acknowledged before its fsync does not survive); a paused process (SIGSTOP); a slow or hung disk; and a
 * membership episode — two voters demoted to learners at once by the leader, whose outgoing messages are cut at
 * that moment, then both promoted back.
 *
 * Lease reads assume bounded clock drift, which a paused process breaks (its ticks stop, its lease does not end):
 * a seed either issues lease reads or pauses processes, never both.
 */
import type { SimNode } from './raft-cluster.js';
import {
  figure8,
  membershipEpisode,
  restartLater,
  staleRead,
  voteTwice,
  type ScheduleContext,
} from './raft-episodes.js';
import type { Random } from './random.js';

export { restoreVoters, type ScheduleContext } from './raft-episodes.js';

type Target = number | 'leader';

export type Fault = { readonly atMs: number } & (
  | {
      readonly kind: 'rates';
      readonly loss: number;
      readonly duplicate: number;
      readonly delay: number;
      readonly maxDelayMs: number;
    }
  | { readonly kind: 'isolate'; readonly target: Target; readonly forMs: number }
  | { readonly kind: 'one-way'; readonly from: Target; readonly to: number; readonly forMs: number }
  | { readonly kind: 'crash'; readonly target: Target; readonly downMs: number }
  | { readonly kind: 'power-loss'; readonly downMs: number }
  | { readonly kind: 'pause'; readonly target: Target; readonly forMs: number }
  | {
      readonly kind: 'disk';
      readonly target: Target;
      readonly hang: boolean;
      readonly forMs: number;
      readonly syncMaxMs: number;
    }
  | { readonly kind: 'membership'; readonly order: number; readonly cutMs: number }
  | { readonly kind: 'figure-8'; readonly cutAfterMs: number }
  | { readonly kind: 'vote-twice'; readonly order: number; readonly downMs: number }
  | { readonly kind: 'stale-read'; readonly cutMs: number }
);

export interface Schedule {
  readonly leaseReads: boolean;
  /** The core's maxInflightMessages: 1 (one append per round trip: figure 8's window is wide) or 8 (pipelined). */
  readonly maxInflightMessages: number;
  readonly faults: readonly Fault[];
}

const WEIGHTS: readonly [Fault['kind'], number][] = [
  ['rates', 10],
  ['isolate', 14],
  ['one-way', 10],
  ['crash', 14],
  ['power-loss', 4],
  ['pause', 10],
  ['disk', 10],
  ['membership', 8],
  ['figure-8', 6],
  ['vote-twice', 6],
  ['stale-read', 6],
];

export function drawSchedule(rng: Random, nodes: number, faultMs: number): Schedule {
  const leaseReads = rng.chance(0.4);
  const maxInflightMessages = rng.chance(0.5) ? 1 : 8;
  const faults: Fault[] = [];
  const total = WEIGHTS.reduce((s, [, w]) => s + w, 0);
  const target = (): Target => (rng.chance(0.5) ? 'leader' : rng.int(0, nodes - 1));
  // The first leader is elected within ~300 ms; faults come every ~120 ms on average after that.
  for (let t = 300 + rng.exp(100); t < faultMs - 100; t += rng.exp(120)) {
    let pick = rng.next() * total;
    let kind: Fault['kind'] = 'rates';
    for (const [k, w] of WEIGHTS) {
      if ((pick -= w) < 0) {
        kind = k;
        break;
      }
    }
    const atMs = t;
    switch (kind) {
      case 'rates':
        faults.push({
          atMs,
          kind,
          loss: rng.range(0, 0.2),
          duplicate: rng.range(0, 0.1),
          delay: rng.range(0, 0.3),
          maxDelayMs: rng.range(1, 80),
        });
        break;
      case 'isolate':
        faults.push({ atMs, kind, target: target(), forMs: rng.range(50, 500) });
        break;
      case 'one-way':
        faults.push({ atMs, kind, from: target(), to: rng.int(0, nodes - 1), forMs: rng.range(50, 600) });
        break;
      case 'crash':
        faults.push({ atMs, kind, target: target(), downMs: rng.range(5, 300) });
        break;
      case 'power-loss':
        faults.push({ atMs, kind, downMs: rng.range(5, 100) });
        break;
      case 'pause':
        if (!leaseReads) faults.push({ atMs, kind, target: target(), forMs: rng.range(30, 400) });
        break;
      case 'disk':
        faults.push({
          atMs,
          kind,
          target: target(),
          hang: rng.chance(0.4),
          forMs: rng.range(50, 600),
          syncMaxMs: rng.range(2, 40),
        });
        break;
      case 'membership':
        faults.push({ atMs, kind, order: rng.int(0, 1_000_000), cutMs: rng.chance(0.7) ? rng.range(100, 400) : 0 });
        break;
      case 'figure-8':
        faults.push({ atMs, kind, cutAfterMs: rng.range(0, 8) });
        break;
      case 'vote-twice':
        faults.push({ atMs, kind, order: rng.int(0, 1), downMs: rng.range(1, 10) });
        break;
      case 'stale-read':
        faults.push({ atMs, kind, cutMs: rng.range(250, 500) });
        break;
    }
  }
  return { leaseReads, maxInflightMessages, faults };
}

/** A fault's target now: 'leader' is the leader as the scheduler sees it when the fault fires. */
function resolve(ctx: ScheduleContext, t: Target): SimNode | undefined {
  if (t === 'leader') return ctx.cluster.leader();
  return ctx.cluster.nodes[t];
}

/** Apply one fault of the schedule (at its time). */
export function applyFault(ctx: ScheduleContext, f: Fault): void {
  const { world, cluster, faults } = ctx;
  const later = (ms: number, fn: () => void): void => world.at(world.now() + ms, fn);
  switch (f.kind) {
    case 'rates':
      faults.set({ loss: f.loss, duplicate: f.duplicate, delay: f.delay, maxDelayMs: f.maxDelayMs });
      ctx.trace(
        `rates loss ${f.loss.toFixed(2)} dup ${f.duplicate.toFixed(2)} delay ${f.delay.toFixed(2)}/${f.maxDelayMs.toFixed(0)}ms`,
      );
      return;
    case 'isolate': {
      const n = resolve(ctx, f.target);
      if (n === undefined) return;
      ctx.trace(`isolate ${n.id} ${f.forMs.toFixed(0)}ms`);
      for (const p of cluster.nodes) {
        if (p === n) continue;
        faults.partition(n.id, p.id);
        faults.partition(p.id, n.id);
      }
      later(f.forMs, () => {
        for (const p of cluster.nodes) {
          faults.heal(n.id, p.id);
          faults.heal(p.id, n.id);
        }
      });
      return;
    }
    case 'one-way': {
      const a = resolve(ctx, f.from);
      const b = cluster.nodes[f.to];
      if (a === undefined || b === undefined || a === b) return;
      ctx.trace(`one-way ${a.id}>${b.id} ${f.forMs.toFixed(0)}ms`);
      faults.partition(a.id, b.id);
      later(f.forMs, () => faults.heal(a.id, b.id));
      return;
    }
    case 'crash': {
      const n = resolve(ctx, f.target);
      if (n === undefined || !n.up) return;
      cluster.crash(n);
      restartLater(ctx, n, f.downMs);
      return;
    }
    case 'power-loss':
      ctx.trace('power loss');
      for (const n of cluster.nodes) {
        cluster.crash(n);
        restartLater(ctx, n, f.downMs);
      }
      return;
    case 'pause': {
      const n = resolve(ctx, f.target);
      if (n === undefined || !n.up) return;
      ctx.trace(`pause ${n.id} ${f.forMs.toFixed(0)}ms`);
      cluster.pause(n);
      later(f.forMs, () => cluster.resume(n));
      return;
    }
    case 'disk': {
      const n = resolve(ctx, f.target);
      if (n === undefined || !n.up) return;
      const slow = n.current.slow;
      ctx.trace(`disk ${n.id} ${f.hang ? 'hangs' : `slow ≤${f.syncMaxMs.toFixed(0)}ms`} ${f.forMs.toFixed(0)}ms`);
      if (f.hang) slow.stallFor(f.forMs);
      else {
        slow.setSyncMs({ min: 1, max: f.syncMaxMs });
        later(f.forMs, () => slow.setSyncMs({ min: 0.2, max: 3 }));
      }
      return;
    }
    case 'membership':
      ctx.episodes.push(membershipEpisode(ctx, f.order, f.cutMs));
      return;
    case 'figure-8':
    case 'vote-twice':
    case 'stale-read':
      // One steered episode at a time: two would cut each other's leaders.
      if (ctx.steered === undefined) {
        const run =
          f.kind === 'figure-8'
            ? figure8(ctx, f.cutAfterMs)
            : f.kind === 'vote-twice'
              ? voteTwice(ctx, f.order, f.downMs)
              : staleRead(ctx, f.cutMs);
        ctx.steered = run.finally(() => (ctx.steered = undefined));
        ctx.episodes.push(ctx.steered);
      }
      return;
  }
}

/**
 * End every fault: rates, partitions, blocks, pauses, slow and hung disks; restart every node that is down, and wait
 * for those already restarting (the liveness phase must not begin while a node's group is still opening).
 */
export async function healAll(ctx: ScheduleContext): Promise<void> {
  ctx.faults.heal();
  ctx.net.heal();
  ctx.cluster.muted.clear();
  const starts: Promise<void>[] = [];
  for (const n of ctx.cluster.nodes) {
    ctx.cluster.resume(n);
    n.current.slow.unstall();
    n.current.slow.setSyncMs({ min: 0.2, max: 3 });
    if (!n.up) starts.push(ctx.cluster.start(n));
    else if (n.starting !== undefined) starts.push(n.starting.catch(() => undefined));
  }
  await Promise.all(starts);
}
