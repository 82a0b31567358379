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
import type { MessageFaults } from './raft-faults.js';
import type { SimCluster, SimNode } from './raft-cluster.js';
import type { SimNetwork } from './raft-world.js';
import type { Random } from './random.js';
import type { SimWorld } from './world.js';

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
    }
  }
  return { leaseReads, maxInflightMessages, faults };
}

export interface ScheduleContext {
  readonly world: SimWorld;
  readonly cluster: SimCluster;
  readonly faults: MessageFaults;
  readonly net: SimNetwork;
  readonly trace: (line: string) => void;
  /** Membership and figure-8 episodes under way (the liveness phase waits for them). */
  readonly episodes: Promise<unknown>[];
  /** The steered episode (figure-8, vote-twice) under way. */
  steered?: Promise<void> | undefined;
}

function resolve(ctx: ScheduleContext, t: Target): SimNode | undefined {
  if (t === 'leader') return ctx.cluster.leader();
  return ctx.cluster.nodes[t];
}

/** Cut everything `n` sends, for `ms` (one way: it still hears the others). */
function cutOutgoing(ctx: ScheduleContext, n: SimNode, ms: number): void {
  for (const p of ctx.cluster.nodes) if (p !== n) ctx.faults.partition(n.id, p.id);
  ctx.world.at(ctx.world.now() + ms, () => {
    for (const p of ctx.cluster.nodes) if (p !== n) ctx.faults.heal(n.id, p.id);
  });
}

function restartLater(ctx: ScheduleContext, n: SimNode, ms: number): void {
  ctx.world.at(ctx.world.now() + ms, () => {
    if (!n.up) void ctx.cluster.start(n);
  });
}

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
      // One steered episode at a time: two would cut each other's leaders.
      if (ctx.steered === undefined) {
        const run = f.kind === 'figure-8' ? figure8(ctx, f.cutAfterMs) : voteTwice(ctx, f.order, f.downMs);
        ctx.steered = run.finally(() => (ctx.steered = undefined));
        ctx.episodes.push(ctx.steered);
      }
      return;
  }
}

/** Poll `cond` every `stepMs` of world time for at most `maxMs`; its value, or undefined. */
async function poll<T>(
  ctx: ScheduleContext,
  cond: () => T | undefined,
  maxMs: number,
  stepMs = 2,
): Promise<T | undefined> {
  for (let waited = 0; waited <= maxMs; waited += stepMs) {
    const v = cond();
    if (v !== undefined) return v;
    await new Promise<void>((r) => ctx.world.clock.setTimeout(r, stepMs));
  }
  return undefined;
}

/** Cut (true) or restore (false) everything `n` sends. */
function setOutgoing(ctx: ScheduleContext, n: SimNode, cut: boolean): void {
  for (const p of ctx.cluster.nodes) {
    if (p === n) continue;
    if (cut) ctx.faults.partition(n.id, p.id);
    else ctx.faults.heal(n.id, p.id);
  }
}

/** A leader's traffic: what a node that wins an election must not get out in a figure-8 episode. */
const LEADER_TRAFFIC: ReadonlySet<string> = new Set(['append', 'heartbeat', 'snapshot']);

/**
 * Figure 8 of the Raft paper, steered. The leader L1 is cut off (everything it sends) while entries of its term
 * pile up in its log, and the others may elect but not replicate: the winner L2's first entry stays its own. Then
 * L1 talks again and L2 stays mute; when a leader of a later term L3 (L1, most often: its log is the longest) is
 * elected, it is cut off `cutAfterMs` later — part of its old-term entries reached a majority, its own term's
 * entry not — and L2 may replicate again. A leader that commits an old-term entry by counting replicas has then
 * committed what L2 overwrites.
 */
async function figure8(ctx: ScheduleContext, cutAfterMs: number): Promise<void> {
  const { cluster } = ctx;
  const l1 = cluster.leader();
  if (l1 === undefined) return;
  const termOf = (n: SimNode): number => n.current.core?.term ?? 0;
  const t1 = termOf(l1);
  ctx.trace(`figure-8: cut ${l1.id} (term ${t1}), the others mute`);
  setOutgoing(ctx, l1, true);
  for (const n of cluster.nodes) if (n !== l1) cluster.muted.set(n.id, LEADER_TRAFFIC);
  const newLeader = (not: SimNode, above: number) => (): SimNode | undefined => {
    const l = cluster.leader();
    return l !== undefined && l !== not && termOf(l) > above ? l : undefined;
  };
  const l2 = await poll(ctx, newLeader(l1, t1), 1000);
  for (const n of cluster.nodes) if (n !== l2) cluster.muted.delete(n.id);
  setOutgoing(ctx, l1, false);
  if (l2 === undefined) return;
  const t2 = termOf(l2);
  ctx.trace(`figure-8: ${l2.id} leads term ${t2}, mute; ${l1.id} talks`);
  const l3 = await poll(ctx, newLeader(l2, t2), 1000);
  if (l3 !== undefined) {
    await new Promise<void>((r) => ctx.world.clock.setTimeout(r, cutAfterMs));
    setOutgoing(ctx, l3, true);
    ctx.trace(`figure-8: cut ${l3.id} (term ${termOf(l3)}); ${l2.id} talks`);
  }
  cluster.muted.delete(l2.id);
  await new Promise<void>((r) => ctx.world.clock.setTimeout(r, 500));
  if (l3 !== undefined) setOutgoing(ctx, l3, false);
}

/**
 * The leader demotes two other voters to learners at once (the second change is proposed while the first is in
 * flight: the runtime must hold it back until the first commits), its outgoing messages cut at that moment for
 * `cutMs`; then both are promoted back.
 */
async function membershipEpisode(ctx: ScheduleContext, order: number, cutMs: number): Promise<void> {
  const leader = ctx.cluster.leader();
  const group = leader?.current.group;
  if (leader === undefined || group === undefined) return;
  const voters = group.status().membership.voters.filter((v) => v !== leader.id);
  if (voters.length < 2) return;
  const x = voters[order % voters.length]!;
  const y = voters[(order + 1) % voters.length]!;
  ctx.trace(`membership: ${leader.id} demotes ${x} and ${y}${cutMs > 0 ? `, cut ${cutMs.toFixed(0)}ms` : ''}`);
  if (cutMs > 0) cutOutgoing(ctx, leader, cutMs);
  const dead = leader.current.dead;
  const changes = [x, y].map((node) =>
    group.changeMembership({ type: 'addLearner', node }, { timeoutMs: 600 }).catch(() => undefined),
  );
  await Promise.race([Promise.all(changes), dead]);
  await restoreVoters(ctx, 5);
}

/** Promote every node back to voter, through whoever leads; true once all are voters. */
export async function restoreVoters(ctx: ScheduleContext, attempts: number): Promise<boolean> {
  const all = ctx.cluster.nodes.map((n) => n.id);
  for (let i = 0; i < attempts; i++) {
    const leader = ctx.cluster.leader();
    const inc = leader?.current;
    const group = inc?.group;
    if (leader === undefined || inc === undefined || group === undefined) {
      await new Promise<void>((r) => ctx.world.clock.setTimeout(r, 100));
      continue;
    }
    const voters = group.status().membership.voters;
    const missing = all.find((id) => !voters.includes(id));
    if (missing === undefined) return true;
    const change = group
      .changeMembership({ type: 'addVoter', node: missing }, { timeoutMs: 600 })
      .catch(() => undefined);
    await Promise.race([change, inc.dead]);
  }
  return false;
}

/**
 * A vote that must survive a crash, steered (3 nodes). The leader L is cut off from everyone and the other two,
 * A and B, may elect but not replicate; once one of them, Y, leads a new term, the other, X, has voted for it: X
 * crashes and restarts `downMs` later, Y's messages to X are cut, and L (whose log is as long as X's) may reach X
 * again, not Y. L campaigns in Y's term; X must refuse (it voted in that term), or two leaders share the term.
 */
async function voteTwice(ctx: ScheduleContext, order: number, downMs: number): Promise<void> {
  const { cluster, faults } = ctx;
  const l = cluster.leader();
  if (l === undefined || cluster.nodes.length !== 3) return;
  const others = cluster.nodes.filter((n) => n !== l);
  const [a, b] = order === 0 ? [others[0]!, others[1]!] : [others[1]!, others[0]!];
  const termOf = (n: SimNode): number => n.current.core?.term ?? 0;
  const tl = termOf(l);
  ctx.trace(`vote-twice: cut ${l.id} (term ${tl}), ${a.id} and ${b.id} mute`);
  setOutgoing(ctx, l, true);
  for (const n of [a, b]) {
    faults.partition(n.id, l.id);
    cluster.muted.set(n.id, LEADER_TRAFFIC);
  }
  const y = await poll(
    ctx,
    () => {
      const x = cluster.leader();
      return x !== undefined && x !== l && termOf(x) > tl ? x : undefined;
    },
    1000,
  );
  if (y !== undefined) {
    const x = y === a ? b : a;
    ctx.trace(`vote-twice: ${y.id} leads term ${termOf(y)}; ${x.id} restarts, talks with ${l.id} only`);
    faults.partition(y.id, x.id);
    cluster.crash(x);
    restartLater(ctx, x, downMs);
    faults.heal(l.id, x.id);
    faults.heal(x.id, l.id);
    await new Promise<void>((r) => ctx.world.clock.setTimeout(r, 400));
    faults.heal(y.id, x.id);
  }
  setOutgoing(ctx, l, false);
  for (const n of [a, b]) {
    faults.heal(n.id, l.id);
    cluster.muted.delete(n.id);
  }
}

/** End every fault: rates, partitions, blocks, pauses, slow and hung disks; restart every node that is down. */
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
  }
  await Promise.all(starts);
}
