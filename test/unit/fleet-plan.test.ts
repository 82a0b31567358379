/**
 * The fleet's membership planner (src/protocol/fleet/plan.ts): one case per rule, then a model of a group driven
 * one step at a time while desired members change, nodes die and come back, and replicas catch up over ticks. After
 * every step the model checks, with its own idea of "healthy": a voter change is only made on a healthy group and
 * keeps a quorum of caught-up live voters; the leader is never removed; voters drop only while above the desired
 * count; `stuck` exactly when a majority of the voters is dead. Once failures stop, the group must reach exactly the
 * desired members and leader within a bounded number of steps.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../src/errors.js';
import { membershipChangeOf, nextStep, quorum, type PlanInput, type PlanStep } from '../../src/protocol/fleet/plan.js';

const LAST = 100;
const LAG = 10;

interface Case {
  voters: string[];
  learners?: string[];
  desired: string[];
  desiredLeader?: string;
  leader?: string;
  dead?: string[];
  /** Live and answering, but far behind. */
  lagging?: string[];
  /** Live (session) but not heard from by the leader: partitioned. */
  silent?: string[];
}

function input(c: Case): PlanInput {
  const learners = c.learners ?? [];
  const leader = c.leader ?? c.voters[0]!;
  const dead = new Set(c.dead ?? []);
  const lagging = new Set(c.lagging ?? []);
  const silent = new Set(c.silent ?? []);
  const progress = new Map<string, { match: number; recentActive: boolean }>();
  for (const n of [...c.voters, ...learners]) {
    if (n === leader) continue;
    progress.set(n, { match: lagging.has(n) ? LAST - LAG - 1 : LAST, recentActive: !dead.has(n) && !silent.has(n) });
  }
  const everyone = new Set([...c.voters, ...learners, ...c.desired]);
  return {
    membership: { voters: c.voters, learners },
    desired: { members: c.desired, leader: c.desiredLeader ?? c.desired[0]! },
    leader,
    progress,
    lastIndex: LAST,
    live: new Set([...everyone].filter((n) => !dead.has(n))),
    catchUpLagEntries: LAG,
  };
}

const plan = (c: Case): PlanStep => nextStep(input(c));

describe('fleet plan: one rule at a time', () => {
  it('adds a missing desired member as a learner, and never a dead one', () => {
    expect(plan({ voters: ['a', 'b', 'c'], desired: ['a', 'b', 'c', 'd'] })).toEqual({ type: 'addLearner', node: 'd' });
    expect(plan({ voters: ['a', 'b', 'c'], desired: ['a', 'b', 'd'], dead: ['d'] })).toMatchObject({
      type: 'none',
      reason: 'waiting-for-node',
    });
  });

  it('promotes a desired learner only once it is caught up, recently active and live', () => {
    const base = { voters: ['a', 'b', 'c'], learners: ['d'], desired: ['a', 'b', 'c', 'd'] };
    expect(plan(base)).toEqual({ type: 'promote', node: 'd' });
    expect(plan({ ...base, lagging: ['d'] })).toMatchObject({ type: 'none', reason: 'catching-up' });
    expect(plan({ ...base, silent: ['d'] })).toMatchObject({ type: 'none', reason: 'catching-up' });
    expect(plan({ ...base, dead: ['d'] })).toMatchObject({ type: 'none', reason: 'catching-up' });
  });

  it('never counts a replica that acknowledged nothing as caught up, however short the log', () => {
    // d answers (recently active) but holds no entry: within catchUpLagEntries of a short log, yet not caught up.
    // Promoting it, then removing c, would leave a,b,d with one of them empty and holding its votes.
    const base = { voters: ['a', 'b', 'c'], learners: ['d'], desired: ['a', 'b', 'd'] };
    const i = input(base);
    const short = { ...i, lastIndex: 5, progress: new Map([...i.progress].map(([n, p]) => [n, { ...p, match: 5 }])) };
    expect(nextStep(short)).toEqual({ type: 'promote', node: 'd' });
    short.progress.set('d', { match: 0, recentActive: true });
    expect(nextStep(short)).toMatchObject({ type: 'none', reason: 'catching-up' });
    // Nor a voter: a,b,c → a,b with b empty — removing c would leave a majority that needs b.
    short.progress.set('b', { match: 0, recentActive: true });
    const shrink = { ...short, membership: { voters: ['a', 'b', 'c'], learners: [] } };
    expect(nextStep({ ...shrink, desired: { members: ['a', 'b'], leader: 'a' } })).toMatchObject({
      type: 'none',
      reason: 'catching-up',
    });
  });

  it('adds before it removes: an undesired voter stays until its replacement is a voter', () => {
    // a,b,c → a,b,d: d is added and promoted first; c goes once there are more voters than desired members.
    expect(plan({ voters: ['a', 'b', 'c'], desired: ['a', 'b', 'd'] })).toEqual({ type: 'addLearner', node: 'd' });
    expect(plan({ voters: ['a', 'b', 'c'], learners: ['d'], desired: ['a', 'b', 'd'], lagging: ['d'] })).toMatchObject({
      type: 'none',
      reason: 'catching-up',
    });
    expect(plan({ voters: ['a', 'b', 'c'], learners: ['d'], desired: ['a', 'b', 'd'] })).toEqual({
      type: 'promote',
      node: 'd',
    });
    expect(plan({ voters: ['a', 'b', 'c', 'd'], desired: ['a', 'b', 'd'] })).toEqual({ type: 'remove', node: 'c' });
    // Shrinking 3 → 2 removes at once.
    expect(plan({ voters: ['a', 'b', 'c'], desired: ['a', 'b'] })).toEqual({ type: 'remove', node: 'c' });
  });

  it('removes dead and lagging undesired voters before healthy ones', () => {
    const c = { voters: ['a', 'b', 'c', 'd', 'e'], desired: ['a', 'b', 'c'] };
    expect(plan({ ...c, dead: ['e'] })).toEqual({ type: 'remove', node: 'e' });
    expect(plan({ ...c, lagging: ['e'] })).toEqual({ type: 'remove', node: 'e' });
    expect(plan(c)).toEqual({ type: 'remove', node: 'd' });
  });

  it('never removes a voter when that would leave fewer caught-up live voters than a quorum', () => {
    // a,b,c,d, desired a,b, b dead: removing c (healthy) leaves a,b,d with a,d healthy: 2 of 3, allowed.
    expect(plan({ voters: ['a', 'b', 'c', 'd'], desired: ['a', 'b'], dead: ['b'] })).toEqual({
      type: 'remove',
      node: 'c',
    });
    // With d behind as well, only 2 of 4 are healthy (quorum 3): no voter changes until d has caught up.
    expect(plan({ voters: ['a', 'b', 'c', 'd'], desired: ['a', 'b'], dead: ['b'], lagging: ['d'] })).toMatchObject({
      type: 'none',
      reason: 'catching-up',
    });
    // a,b,c,d,e, desired a,b; c,d dead: removing c or d keeps 3 healthy of 4 (quorum 3); removing e (healthy)
    // would not (2 of 4) — the dead ones go first.
    expect(plan({ voters: ['a', 'b', 'c', 'd', 'e'], desired: ['a', 'b'], dead: ['c', 'd'] })).toEqual({
      type: 'remove',
      node: 'c',
    });
    // a,b,d, desired a,b, b behind: removing d (healthy) would leave a,b with only a healthy — refused.
    expect(plan({ voters: ['a', 'b', 'd'], desired: ['a', 'b'], lagging: ['b'] })).toMatchObject({
      type: 'none',
      reason: 'catching-up',
    });
    // a,b,c,d,e, desired a,b,c, b and c behind: 3 of 5 healthy; removing d or e would leave 2 of 4 — refused.
    expect(plan({ voters: ['a', 'b', 'c', 'd', 'e'], desired: ['a', 'b', 'c'], lagging: ['b', 'c'] })).toMatchObject({
      type: 'none',
      reason: 'catching-up',
    });
  });

  it('removes learners that are not desired, even on a group that is catching up', () => {
    expect(plan({ voters: ['a', 'b', 'c'], learners: ['x'], desired: ['a', 'b', 'c'] })).toEqual({
      type: 'remove',
      node: 'x',
    });
    expect(plan({ voters: ['a', 'b', 'c'], learners: ['x'], desired: ['a', 'b', 'c'], lagging: ['b', 'c'] })).toEqual({
      type: 'remove',
      node: 'x',
    });
  });

  it('never removes the leader: it transfers leadership to the desired leader first', () => {
    // a leads, a is not desired: d is added and promoted, then a hands over to the desired leader.
    const c = { voters: ['a', 'b', 'c', 'd'], desired: ['b', 'c', 'd'], desiredLeader: 'c', leader: 'a' };
    expect(plan(c)).toEqual({ type: 'transferLeader', node: 'c' });
    // The desired leader is lagging: any healthy desired voter (first by id) will do.
    expect(plan({ ...c, lagging: ['c'] })).toEqual({ type: 'transferLeader', node: 'b' });
    // The new leader removes the old one.
    expect(plan({ ...c, leader: 'c' })).toEqual({ type: 'remove', node: 'a' });
    // Not while the replacement is still missing.
    expect(plan({ voters: ['a', 'b', 'c'], desired: ['b', 'c', 'd'], leader: 'a', dead: ['d'] })).toMatchObject({
      type: 'none',
      reason: 'waiting-for-node',
    });
  });

  it('moves leadership to the desired leader once the members are right, when it is caught up', () => {
    const c = { voters: ['a', 'b', 'c'], desired: ['a', 'b', 'c'], desiredLeader: 'b', leader: 'a' };
    expect(plan(c)).toEqual({ type: 'transferLeader', node: 'b' });
    expect(plan({ ...c, lagging: ['b'] })).toMatchObject({ type: 'none', reason: 'catching-up' });
    expect(plan({ ...c, dead: ['b'] })).toMatchObject({ type: 'none', reason: 'waiting-for-node' });
    expect(plan({ ...c, leader: 'b' })).toMatchObject({ type: 'none', reason: 'converged' });
    // Not before the members are right.
    expect(plan({ ...c, desired: ['a', 'b', 'c', 'd'] })).toEqual({ type: 'addLearner', node: 'd' });
  });

  it('is stuck exactly when fewer than a majority of the voters are live and reachable', () => {
    expect(plan({ voters: ['a', 'b', 'c'], desired: ['a', 'd', 'e'], dead: ['b', 'c'] })).toMatchObject({
      type: 'stuck',
      reason: 'majority-lost',
    });
    expect(plan({ voters: ['a', 'b', 'c'], desired: ['a', 'b', 'c'], dead: ['b'], silent: ['c'] })).toMatchObject({
      type: 'stuck',
    });
    // One of three dead is not stuck; a majority that is live but behind is catching up, not stuck.
    expect(plan({ voters: ['a', 'b', 'c'], desired: ['a', 'b', 'd'], dead: ['c'] })).toEqual({
      type: 'addLearner',
      node: 'd',
    });
    expect(plan({ voters: ['a', 'b', 'c'], desired: ['a', 'b', 'c'], lagging: ['b', 'c'] })).toMatchObject({
      type: 'none',
      reason: 'catching-up',
    });
    // A single voter group is never stuck while its leader runs.
    expect(plan({ voters: ['a'], desired: ['a', 'b'] })).toEqual({ type: 'addLearner', node: 'b' });
  });

  it('adds learners while a majority catches up, but changes no voter and moves no leader', () => {
    const c = { voters: ['a', 'b', 'c'], desired: ['a', 'b', 'c', 'd'], lagging: ['b', 'c'] };
    expect(plan(c)).toEqual({ type: 'addLearner', node: 'd' });
    expect(plan({ ...c, learners: ['d'] })).toMatchObject({ type: 'none', reason: 'catching-up' });
  });

  it('waits while the leader is not a voter (removed by someone else)', () => {
    expect(plan({ voters: ['b', 'c'], learners: ['a'], desired: ['a', 'b', 'c'], leader: 'a' })).toMatchObject({
      type: 'none',
      reason: 'leader-leaving',
    });
  });

  it('refuses inputs that describe no real group', () => {
    const ok = input({ voters: ['a', 'b', 'c'], desired: ['a', 'b', 'c'] });
    const bad: PlanInput[] = [
      { ...ok, desired: { members: [], leader: 'a' } },
      { ...ok, desired: { members: ['a', 'b'], leader: 'z' } },
      { ...ok, desired: { members: ['a', 'a'], leader: 'a' } },
      { ...ok, membership: { voters: ['a', 'b'], learners: ['b'] } },
      { ...ok, membership: { voters: [], learners: ['a'] } },
      { ...ok, catchUpLagEntries: -1 },
      { ...ok, lastIndex: 1.5 },
    ];
    for (const b of bad) expect(() => nextStep(b)).toThrow(InvalidArgumentError);
  });

  it('maps steps to Raft membership changes', () => {
    expect(membershipChangeOf({ type: 'promote', node: 'd' })).toEqual({ type: 'addVoter', node: 'd' });
    expect(membershipChangeOf({ type: 'addLearner', node: 'd' })).toEqual({ type: 'addLearner', node: 'd' });
    expect(membershipChangeOf({ type: 'remove', node: 'd' })).toEqual({ type: 'remove', node: 'd' });
    expect(membershipChangeOf({ type: 'transferLeader', node: 'd' })).toBeUndefined();
  });
});

// ---- The model ----

const POOL = ['n1', 'n2', 'n3', 'n4', 'n5', 'n6'];

type Action =
  | { t: 'plan' }
  | { t: 'tick'; writes: number; catchUp: number }
  | { t: 'kill'; n: number }
  | { t: 'revive'; n: number }
  | { t: 'slow'; n: number; behind: number }
  | { t: 'desire'; mask: number; lead: number };

class Group {
  voters: string[];
  learners: string[] = [];
  leader: string | undefined;
  lastIndex = 0;
  readonly match = new Map<string, number>();
  readonly alive = new Set(POOL);
  desired: { members: string[]; leader: string };
  /** Once a node died, a planned step may still run on a group that failures made unhealthy. */
  failed = false;
  steps = 0;

  constructor(voters: string[], desired: { members: string[]; leader: string }) {
    this.voters = voters;
    this.leader = voters[0];
    this.desired = desired;
    for (const n of voters) this.match.set(n, 0);
  }

  healthy(n: string): boolean {
    return this.alive.has(n) && (n === this.leader || this.lastIndex - (this.match.get(n) ?? -1e9) <= LAG);
  }

  healthyVoters(voters: readonly string[]): number {
    return voters.filter((n) => this.healthy(n)).length;
  }

  input(): PlanInput {
    const progress = new Map<string, { match: number; recentActive: boolean }>();
    for (const n of [...this.voters, ...this.learners]) {
      if (n !== this.leader) progress.set(n, { match: this.match.get(n)!, recentActive: this.alive.has(n) });
    }
    return {
      membership: { voters: [...this.voters], learners: [...this.learners] },
      desired: this.desired,
      leader: this.leader!,
      progress,
      lastIndex: this.lastIndex,
      live: new Set(this.alive),
      catchUpLagEntries: LAG,
    };
  }

  /** Raft elects the most up-to-date live voter once a majority of the voters is live. */
  elect(): void {
    if (this.leader !== undefined && this.alive.has(this.leader) && this.voters.includes(this.leader)) return;
    this.leader = undefined;
    const up = this.voters.filter((n) => this.alive.has(n));
    if (up.length < quorum(this.voters.length)) return;
    up.sort((a, b) => this.match.get(b)! - this.match.get(a)! || (a < b ? -1 : 1));
    this.leader = up[0]!;
    // The new leader's log is the reference; longer uncommitted tails elsewhere are cut.
    this.lastIndex = this.match.get(this.leader)!;
    for (const [n, m] of this.match) this.match.set(n, Math.min(m, this.lastIndex));
  }

  tick(writes: number, catchUp: number): void {
    if (this.leader === undefined) return;
    const before = this.lastIndex;
    this.lastIndex += writes;
    this.match.set(this.leader, this.lastIndex);
    for (const n of [...this.voters, ...this.learners]) {
      if (n === this.leader || !this.alive.has(n)) continue;
      const m = this.match.get(n)!;
      // A replica in step with the leader stays so; one behind (new, or back from the dead) catches up gradually.
      this.match.set(n, before - m <= LAG ? this.lastIndex : Math.min(this.lastIndex, m + catchUp));
    }
  }

  /** Ask the planner, check its answer against the model, apply it. */
  plan(): PlanStep | undefined {
    if (this.leader === undefined) return undefined;
    const step = nextStep(this.input());
    this.steps++;
    const v = this.voters;
    const liveVoters = v.filter((n) => this.alive.has(n)).length;
    // Stuck exactly when a majority of the voters is truly lost.
    expect(step.type === 'stuck').toBe(liveVoters < quorum(v.length));
    if (step.type === 'none' || step.type === 'stuck') return step;
    const n = step.node;
    const healthyBefore = this.healthyVoters(v) >= quorum(v.length);
    switch (step.type) {
      case 'addLearner':
        expect(this.alive.has(n)).toBe(true);
        expect(this.desired.members).toContain(n);
        expect([...v, ...this.learners]).not.toContain(n);
        this.learners = [...this.learners, n];
        this.match.set(n, 0);
        return step;
      case 'promote': {
        expect(this.learners).toContain(n);
        expect(this.desired.members).toContain(n);
        expect(this.healthy(n)).toBe(true);
        const after = [...v, n];
        expect(healthyBefore).toBe(true);
        expect(this.healthyVoters(after)).toBeGreaterThanOrEqual(quorum(after.length));
        this.learners = this.learners.filter((x) => x !== n);
        this.voters = after;
        return step;
      }
      case 'remove': {
        expect(n).not.toBe(this.leader);
        expect(this.desired.members).not.toContain(n);
        if (this.learners.includes(n)) {
          this.learners = this.learners.filter((x) => x !== n);
        } else {
          expect(v).toContain(n);
          const after = v.filter((x) => x !== n);
          expect(healthyBefore).toBe(true);
          expect(this.healthyVoters(after)).toBeGreaterThanOrEqual(quorum(after.length));
          // Add before remove: voters go down only while there are more than desired members.
          expect(after.length).toBeGreaterThanOrEqual(this.desired.members.length);
          this.voters = after;
        }
        this.match.delete(n);
        return step;
      }
      case 'transferLeader':
        expect(healthyBefore).toBe(true);
        expect(v).toContain(n);
        expect(this.healthy(n)).toBe(true);
        expect(this.desired.members).toContain(n);
        this.leader = n;
        return step;
    }
  }

  apply(a: Action): void {
    switch (a.t) {
      case 'plan':
        this.plan();
        break;
      case 'tick':
        this.tick(a.writes, a.catchUp);
        break;
      case 'kill':
        this.failed = true;
        this.alive.delete(POOL[a.n]!);
        this.elect();
        break;
      case 'revive':
        this.alive.add(POOL[a.n]!);
        this.elect();
        break;
      case 'slow': {
        // A live replica falls behind (a slow disk, a long pause): it catches up again over the next ticks.
        const n = POOL[a.n]!;
        if (n === this.leader || !this.match.has(n)) break;
        this.failed = true;
        this.match.set(n, Math.max(0, this.lastIndex - LAG - a.behind));
        break;
      }
      case 'desire':
        this.desired = desiredOf(a.mask, a.lead);
        break;
    }
    // Until something fails, planned moves alone never leave fewer caught-up live voters than a quorum.
    if (!this.failed) expect(this.healthyVoters(this.voters)).toBeGreaterThanOrEqual(quorum(this.voters.length));
  }
}

/** A non-empty subset of the pool of at most 5 nodes, and one of them as leader. */
function desiredOf(mask: number, lead: number): { members: string[]; leader: string } {
  let members = POOL.filter((_, i) => (mask >> i) & 1);
  if (members.length === 0) members = [POOL[mask % POOL.length]!];
  members = members.slice(0, 5);
  return { members, leader: members[lead % members.length]! };
}

const actionArb: fc.Arbitrary<Action> = fc.oneof(
  { weight: 8, arbitrary: fc.constant({ t: 'plan' as const }) },
  {
    weight: 6,
    arbitrary: fc.record({
      t: fc.constant('tick' as const),
      writes: fc.nat(30),
      catchUp: fc.integer({ min: 1, max: 40 }),
    }),
  },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('kill' as const), n: fc.nat(POOL.length - 1) }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('revive' as const), n: fc.nat(POOL.length - 1) }) },
  {
    weight: 2,
    arbitrary: fc.record({
      t: fc.constant('slow' as const),
      n: fc.nat(POOL.length - 1),
      behind: fc.integer({ min: 1, max: 80 }),
    }),
  },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('desire' as const), mask: fc.nat(63), lead: fc.nat(4) }) },
);

const scenarioArb = fc.record({
  initial: fc.record({ mask: fc.integer({ min: 1, max: 63 }), lead: fc.nat(4) }),
  desired: fc.record({ mask: fc.integer({ min: 1, max: 63 }), lead: fc.nat(4) }),
  actions: fc.array(actionArb, { minLength: 20, maxLength: 150 }),
  faults: fc.boolean(),
});

describe('fleet plan: a modelled group under moves, failures and catch-up', () => {
  it('keeps a quorum of caught-up voters, never removes the leader, and converges once failures stop', () => {
    fc.assert(
      fc.property(scenarioArb, ({ initial, desired, actions, faults }) => {
        const start = desiredOf(initial.mask, initial.lead);
        const g = new Group(start.members, desiredOf(desired.mask, desired.lead));
        for (const a of actions) {
          if (!faults && (a.t === 'kill' || a.t === 'revive' || a.t === 'slow')) continue;
          g.apply(a);
        }
        // Failures stop: every node comes back, replicas catch up, the planner runs until done.
        for (const n of POOL) g.alive.add(n);
        g.elect();
        expect(g.leader).toBeDefined();
        let last: PlanStep | undefined;
        for (let i = 0; i < 60; i++) {
          g.tick(1, 500);
          last = g.plan();
          if (last?.type === 'none' && last.reason === 'converged') break;
        }
        expect(last).toMatchObject({ type: 'none', reason: 'converged' });
        expect([...g.voters].sort()).toEqual([...g.desired.members].sort());
        expect(g.learners).toEqual([]);
        expect(g.leader).toBe(g.desired.leader);
      }),
      { numRuns: 300 },
    );
  });
});
