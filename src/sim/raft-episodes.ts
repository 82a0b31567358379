/**
 * The Raft simulation's steered episodes (issue 13, item 5): fault sequences that react to what the cluster does —
 * who leads, who voted — to set up the rare schedules a Raft bug needs: two membership changes at once under a cut,
 * figure 8 of the Raft paper, a vote that must survive a crash. Drawn and started by raft-schedule.ts.
 */
import type { MessageFaults } from './raft-faults.js';
import type { SimCluster, SimNode } from './raft-cluster.js';
import type { SimNetwork } from './raft-world.js';
import type { SimWorld } from './world.js';

/** What the schedule's faults and episodes act on. */
export interface ScheduleContext {
  readonly world: SimWorld;
  readonly cluster: SimCluster;
  readonly faults: MessageFaults;
  readonly net: SimNetwork;
  readonly trace: (line: string) => void;
  /** Membership and figure-8 episodes under way (the liveness phase waits for them). */
  readonly episodes: Promise<unknown>[];
  /** The steered episode (figure-8, vote-twice, stale-read) under way. */
  steered?: Promise<void> | undefined;
  /** A write through one node, then a read through another (SimClients.writeThenRead). */
  readonly writeThenRead: (writer: SimNode, reader: SimNode) => Promise<void>;
}

/** Cut everything `n` sends, for `ms` (one way: it still hears the others). */
export function cutOutgoing(ctx: ScheduleContext, n: SimNode, ms: number): void {
  for (const p of ctx.cluster.nodes) if (p !== n) ctx.faults.partition(n.id, p.id);
  ctx.world.at(ctx.world.now() + ms, () => {
    for (const p of ctx.cluster.nodes) if (p !== n) ctx.faults.heal(n.id, p.id);
  });
}

/** Start `n` again in `ms` unless it is up by then (a crash's restart). */
export function restartLater(ctx: ScheduleContext, n: SimNode, ms: number): void {
  ctx.world.at(ctx.world.now() + ms, () => {
    if (!n.up) void ctx.cluster.start(n);
  });
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
export async function figure8(ctx: ScheduleContext, cutAfterMs: number): Promise<void> {
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
export async function membershipEpisode(ctx: ScheduleContext, order: number, cutMs: number): Promise<void> {
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
export async function voteTwice(ctx: ScheduleContext, order: number, downMs: number): Promise<void> {
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

/**
 * A deposed leader must not answer reads, steered. The leader L is cut off both ways; as soon as another leader is
 * elected while L still believes it leads (its check-quorum has not run out yet), a client writes through the new
 * leader and, once acknowledged, reads through L: L must confirm its leadership first (ReadIndex) and so fail, or
 * the read misses the write.
 */
export async function staleRead(ctx: ScheduleContext, cutMs: number): Promise<void> {
  const { cluster, faults } = ctx;
  const l = cluster.leader();
  if (l === undefined) return;
  const tl = l.current.core?.term ?? 0;
  ctx.trace(`stale-read: isolate ${l.id} (term ${tl}) ${cutMs.toFixed(0)}ms`);
  const pairs = cluster.nodes.filter((n) => n !== l);
  for (const p of pairs) {
    faults.partition(l.id, p.id);
    faults.partition(p.id, l.id);
  }
  const l2 = await poll(
    ctx,
    () => {
      for (const n of pairs) {
        const c = n.current.core;
        if (n.up && c !== undefined && c.role === 'leader' && c.term > tl) return n;
      }
      return undefined;
    },
    cutMs,
  );
  if (l2 !== undefined && l.up && l.current.core?.role === 'leader') {
    ctx.trace(`stale-read: ${l2.id} leads, ${l.id} still believes it does`);
    await ctx.writeThenRead(l2, l);
  }
  for (const p of pairs) {
    faults.heal(l.id, p.id);
    faults.heal(p.id, l.id);
  }
}
