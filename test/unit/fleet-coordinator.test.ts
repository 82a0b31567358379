/**
 * The fleet coordinator (src/protocol/fleet/coordinator.ts, src/runtime/fleet/coordinator.ts, member.ts) on the
 * memory store with virtual time: nodes register and the elected coordinator writes a desired placement for every
 * group (members over zones, leaders balanced); a node that leaves is replaced after its grace period with minimal
 * movement; a stale coordinator's write is refused; a group added later is placed; a corrupt desired record is
 * skipped and reported while the others go on; the per-round bound.
 */
import { describe, expect, it } from 'vitest';
import { MemoryServer } from '../../src/backends/memory/server.js';
import { MemoryStore } from '../../src/backends/memory/store.js';
import { CorruptDataError } from '../../src/errors.js';
import {
  decideFleetRound,
  FOUNDING_RECHECK_MS,
  newFleetCoordinatorMemory,
  type FleetCoordinatorSettings,
} from '../../src/protocol/fleet/coordinator.js';
import { addGroup, readFleetView, registerNode, reportObserved, type FleetView } from '../../src/protocol/fleet/io.js';
import { fleetStatus } from '../../src/protocol/fleet/status.js';
import {
  decodeDesired,
  encodeRecord,
  FleetKeys,
  type DesiredRecord,
  type ObservedRecord,
} from '../../src/protocol/fleet/keys.js';
import { FleetCoordinator } from '../../src/runtime/fleet/coordinator.js';
import { FleetControl, resolveFleetControlOptions } from '../../src/runtime/fleet/member.js';
import { VirtualClock } from '../../src/store/clock.js';
import { Election } from '../../src/store/election.js';
import { drive, until } from '../harness/virtual-time.js';

const FLEET = 'f1';
const keys = new FleetKeys(FLEET);
const ZONES = ['a', 'b', 'c'];

interface World {
  readonly clock: VirtualClock;
  readonly server: MemoryServer;
  /** The operator's client: adds groups, reads records. */
  readonly admin: MemoryStore;
  readonly nodes: Map<string, FleetControl>;
  readonly errors: { node: string; error: unknown; context: string }[];
  /** Whether reading the desired records also plays each new group's first leader report (no Raft here). */
  autoReport: boolean;
}

function world(): World {
  const clock = new VirtualClock(1000);
  const server = new MemoryServer({ clock });
  return { clock, server, admin: new MemoryStore({ server, clock }), nodes: new Map(), errors: [], autoReport: true };
}

async function startNode(
  w: World,
  id: string,
  zone: string,
  extra: { gracePeriodMs?: number; maxDesiredWritesPerRound?: number; machines?: string[] } = {},
  listen: (c: FleetControl) => void = () => undefined,
): Promise<FleetControl> {
  const store = new MemoryStore({ server: w.server, clock: w.clock });
  const c = new FleetControl({
    // The state machines it runs (FleetNode passes its `machines`; absent: an older release, every machine).
    ...(extra.machines !== undefined ? { machines: extra.machines } : {}),
    ...resolveFleetControlOptions({
      store,
      fleet: FLEET,
      node: { id, zone, address: `127.0.0.1:${7000 + w.nodes.size}` },
      incarnation: `${id}-1`,
      sessionTtlMs: 2000,
      gracePeriodMs: extra.gracePeriodMs ?? 1000,
      maxDesiredWritesPerRound: extra.maxDesiredWritesPerRound,
    }),
  });
  // Before start: the events opened while joining (on a timer) must find their listeners.
  c.on('error', (e) => w.errors.push({ node: id, ...e }));
  listen(c);
  await drive(w.clock, c.start());
  w.nodes.set(id, c);
  return c;
}

async function desired(w: World): Promise<Map<string, { rec: DesiredRecord; rev: number }>> {
  const out = new Map<string, { rec: DesiredRecord; rev: number }>();
  const reported = new Set((await w.admin.range(keys.observed)).kvs.map((kv) => kv.key.slice(keys.observed.length)));
  for (const kv of (await w.admin.range(keys.desired)).kvs) {
    try {
      const rec = decodeDesired(keys, kv.key, kv.value);
      out.set(kv.key.slice(keys.desired.length), { rec, rev: kv.modRevision });
      // No Raft here: play each new group's first leader report, which ends its creation (the coordinator keeps
      // a group's first desired record until then).
      if (w.autoReport && !reported.has(rec.name)) await reportObserved(w.admin, keys, createdReport(rec));
    } catch (err) {
      if (!(err instanceof CorruptDataError)) throw err; // junk planted by a test: not a placement
    }
  }
  return out;
}

function createdReport(d: DesiredRecord): ObservedRecord {
  return {
    name: d.name,
    generation: d.generation,
    reporter: d.leader,
    term: 1,
    leader: d.leader,
    voters: [...d.initial],
    learners: [],
    membershipIndex: 0,
    committed: 1,
    lag: {},
    status: 'converged',
    detail: 'created',
  };
}

/** Poll the store (as a test sees it) until `pred` holds on the desired records. */
async function untilDesired(
  w: World,
  pred: (d: Map<string, { rec: DesiredRecord; rev: number }>) => boolean,
  what: string,
): Promise<Map<string, { rec: DesiredRecord; rev: number }>> {
  let last = new Map<string, { rec: DesiredRecord; rev: number }>();
  let ok = false;
  const end = w.clock.now() + 20_000;
  while (!ok) {
    if (w.clock.now() > end) throw new Error(`not reached: ${what}`);
    last = await drive(w.clock, desired(w));
    ok = pred(last);
    if (!ok) await w.clock.runFor(50);
  }
  return last;
}

/** What each group's leader would report: its desired members as voters, its desired leader leading. */
async function reportAll(w: World, d: Map<string, { rec: DesiredRecord }>): Promise<void> {
  for (const { rec } of d.values()) {
    await drive(
      w.clock,
      reportObserved(w.admin, keys, {
        name: rec.name,
        generation: rec.generation,
        reporter: rec.leader,
        term: 1,
        leader: rec.leader,
        voters: [...rec.members].sort(),
        learners: [],
        membershipIndex: 1,
        committed: 1,
        lag: {},
        status: 'converged',
        detail: '',
      }),
    );
  }
}

const groupNames = (n: number): string[] => Array.from({ length: n }, (_, i) => `g${String(i).padStart(2, '0')}`);

async function addGroups(w: World, names: readonly string[], machine = 'kv'): Promise<void> {
  for (const name of names) await drive(w.clock, addGroup(w.admin, keys, name, { replicas: 3, machine }));
}

async function closeAll(w: World): Promise<void> {
  for (const c of w.nodes.values()) await drive(w.clock, c.close());
}

/** Every node is the desired leader of `each` groups (groups placed one by one are rebalanced once created). */
function balanced(m: Map<string, { rec: DesiredRecord }>, each: number): boolean {
  const leaders = new Map<string, number>();
  for (const { rec } of m.values()) leaders.set(rec.leader, (leaders.get(rec.leader) ?? 0) + 1);
  return [...leaders.values()].every((n) => n === each);
}

function coordinators(w: World): string[] {
  return [...w.nodes].filter(([, c]) => c.isCoordinator).map(([id]) => id);
}

describe('fleet coordinator (runtime, memory store, virtual time)', () => {
  it('places every group: members over distinct zones, desired leaders balanced, one coordinator', async () => {
    const w = world();
    for (let i = 0; i < 6; i++) await startNode(w, `n${i}`, ZONES[i % 3]!);
    await until(w.clock, () => coordinators(w).length === 1, 'a coordinator');
    const names = groupNames(30);
    await addGroups(w, names);
    const d = await untilDesired(w, (m) => names.every((n) => m.has(n)) && balanced(m, 5), 'every group placed');
    const zoneOf = (id: string): string => ZONES[Number(id.slice(1)) % 3]!;
    const leaders = new Map<string, number>();
    for (const n of names) {
      const rec = d.get(n)!.rec;
      expect(rec.members).toHaveLength(3);
      expect(new Set(rec.members.map(zoneOf)).size).toBe(3);
      expect(rec.members[0]).toBe(rec.leader);
      leaders.set(rec.leader, (leaders.get(rec.leader) ?? 0) + 1);
    }
    // 30 groups over 6 equal nodes: 5 desired leaders each.
    expect([...leaders.values()].sort()).toEqual([5, 5, 5, 5, 5, 5]);
    expect(new Set(names.map((n) => d.get(n)!.rec.token)).size).toBe(1);
    expect(w.errors).toEqual([]);
    await closeAll(w);
  });

  it('places a group only on active nodes that run its machine; a machine nobody runs is unplaced, said why', async () => {
    const w = world();
    // n0-n2 run kv only; n3-n5 run kv and queue; n6 is of an older release (no list: every machine).
    for (let i = 0; i < 6; i++) {
      await startNode(w, `n${i}`, ZONES[i % 3]!, { machines: i < 3 ? ['kv'] : ['kv', 'queue'] });
    }
    await until(w.clock, () => coordinators(w).length === 1, 'a coordinator');
    const kv = groupNames(12);
    const queues = kv.map((n) => `q-${n}`);
    await addGroups(w, kv);
    await addGroups(w, queues, 'queue');
    await addGroups(w, ['locks'], 'lock');
    const d = await untilDesired(w, (m) => [...kv, ...queues].every((n) => m.has(n)), 'kv and queue groups placed');
    for (const n of queues) {
      const members = d.get(n)!.rec.members;
      expect(members, n).toHaveLength(3);
      for (const m of members) expect(['n3', 'n4', 'n5'], `${n} on ${m}`).toContain(m);
    }
    expect(new Set(kv.flatMap((n) => d.get(n)!.rec.members)).size).toBeGreaterThan(3);
    expect(d.has('locks')).toBe(false);
    const status = fleetStatus(
      FLEET,
      await drive(
        w.clock,
        readFleetView(w.admin, keys, () => undefined),
      ),
    );
    const locks = status.groups.find((g) => g.name === 'locks')!;
    expect(locks.health).toBe('unplaced');
    expect(locks.detail).toMatch(/no active node runs its state machine "lock"/);
    // A node that runs it (here: one that says nothing, as an older release) joins: the group is placed on it.
    await startNode(w, 'n6', 'a');
    const after = await untilDesired(w, (m) => m.has('locks'), 'locks placed once a node may run it');
    expect(after.get('locks')!.rec.members).toEqual(['n6']);
    expect(w.errors).toEqual([]);
    await closeAll(w);
  });

  it('a node that leaves is replaced after the grace period: only its groups change members, one member each', async () => {
    const w = world();
    for (let i = 0; i < 6; i++) await startNode(w, `n${i}`, ZONES[i % 3]!, { gracePeriodMs: 3000 });
    await until(w.clock, () => coordinators(w).length === 1, 'a coordinator');
    const names = groupNames(30);
    await addGroups(w, names);
    const before = await untilDesired(
      w,
      (m) => names.every((n) => m.has(n)) && balanced(m, 5),
      'every group placed, leaders balanced',
    );
    // Leave with a node that is not the coordinator (so the coordinator's own grace memory is exercised).
    const victim = [...w.nodes.keys()].find((id) => !w.nodes.get(id)!.isCoordinator)!;
    await drive(w.clock, w.nodes.get(victim)!.close());
    w.nodes.delete(victim);
    // Within the grace period nothing moves.
    await w.clock.runFor(2000);
    const during = await drive(w.clock, desired(w));
    for (const n of names) expect(during.get(n)!.rev).toBe(before.get(n)!.rev);
    const after = await untilDesired(
      w,
      (m) => names.every((n) => !m.get(n)!.rec.members.includes(victim)),
      `no group on ${victim}`,
    );
    const affected = names.filter((n) => before.get(n)!.rec.members.includes(victim));
    expect(affected.length).toBeGreaterThan(0);
    let rewritten = 0;
    for (const n of names) {
      const b = before.get(n)!.rec;
      const a = after.get(n)!.rec;
      if (after.get(n)!.rev !== before.get(n)!.rev) rewritten++;
      const gained = a.members.filter((m) => !b.members.includes(m));
      const lost = b.members.filter((m) => !a.members.includes(m));
      if (affected.includes(n)) {
        expect(lost).toEqual([victim]);
        expect(gained).toHaveLength(1);
        expect(new Set(a.members.map((m) => ZONES[Number(m.slice(1)) % 3])).size).toBe(3);
      } else {
        // Unaffected groups keep their members; at most their desired leader moves (to rebalance leaders).
        expect(gained).toEqual([]);
        expect(lost).toEqual([]);
      }
    }
    // Rewrites: the affected groups plus the few leader hand-overs balance needs (about groups / nodes).
    expect(rewritten).toBeLessThanOrEqual(affected.length + Math.ceil(30 / 5));
    await closeAll(w);
  });

  it('when the coordinator node itself dies, the new coordinator gives its groups the grace period too', async () => {
    const w = world();
    for (let i = 0; i < 4; i++) await startNode(w, `n${i}`, ZONES[i % 3]!, { gracePeriodMs: 3000 });
    await until(w.clock, () => coordinators(w).length === 1, 'a coordinator');
    const names = groupNames(20);
    await addGroups(w, names);
    const before = await untilDesired(w, (m) => names.every((n) => m.has(n)), 'every group placed');
    const victim = coordinators(w)[0]!;
    const affected = names.filter((n) => before.get(n)!.rec.members.includes(victim));
    expect(affected.length).toBeGreaterThan(0);
    await drive(w.clock, w.nodes.get(victim)!.close());
    w.nodes.delete(victim);
    await until(w.clock, () => coordinators(w).length === 1, 'a new coordinator');
    await w.clock.runFor(2000);
    const during = await drive(w.clock, desired(w));
    for (const n of affected) expect(during.get(n)!.rev).toBe(before.get(n)!.rev);
    const after = await untilDesired(
      w,
      (m) => names.every((n) => !m.get(n)!.rec.members.includes(victim)),
      `no group on ${victim}`,
    );
    for (const n of affected) {
      expect(after.get(n)!.rec.members.filter((m) => !before.get(n)!.rec.members.includes(m))).toHaveLength(1);
    }
    await closeAll(w);
  });

  it('a draining node (deactivating) loses its desired members at once, and its leaving then moves nothing', async () => {
    const w = world();
    for (let i = 0; i < 4; i++) await startNode(w, `n${i}`, ZONES[i % 3]!, { gracePeriodMs: 5000 });
    await until(w.clock, () => coordinators(w).length === 1, 'a coordinator');
    const names = groupNames(16);
    await addGroups(w, names);
    await untilDesired(w, (m) => names.every((n) => m.has(n)), 'every group placed');
    const victim = [...w.nodes.keys()].find((id) => !w.nodes.get(id)!.isCoordinator)!;
    const startedAtMs = w.clock.now();
    await drive(w.clock, w.nodes.get(victim)!.markDeactivating());
    const drained = await untilDesired(
      w,
      (m) => names.every((n) => !m.get(n)!.rec.members.includes(victim)),
      `no group on ${victim}`,
    );
    expect(w.clock.now() - startedAtMs).toBeLessThan(5000);
    await drive(w.clock, w.nodes.get(victim)!.close());
    w.nodes.delete(victim);
    await w.clock.runFor(6000);
    const after = await drive(w.clock, desired(w));
    for (const n of names) expect(after.get(n)!.rev).toBe(drained.get(n)!.rev);
    await closeAll(w);
  });

  it('a group being founded is not rebalanced until a leader reports, unless a member is no longer placeable', async () => {
    const w = world();
    w.autoReport = false;
    for (let i = 0; i < 3; i++) await startNode(w, `n${i}`, ZONES[i]!);
    await until(w.clock, () => coordinators(w).length === 1, 'a coordinator');
    const names = groupNames(6);
    await addGroups(w, names);
    const first = await untilDesired(w, (m) => names.every((n) => m.has(n)), 'every group placed');
    // Three more nodes: the placement would move members, but no group has reported: every record stays version 1.
    for (let i = 3; i < 6; i++) await startNode(w, `n${i}`, ZONES[i % 3]!);
    await w.clock.runFor(3000);
    const held = await drive(w.clock, desired(w));
    for (const n of names) expect(held.get(n)!.rev, n).toBe(first.get(n)!.rev);
    // Once their leaders report, they are rebalanced onto the new nodes.
    await reportAll(w, held);
    await untilDesired(
      w,
      (m) => names.some((n) => m.get(n)!.rec.members.some((x) => Number(x.slice(1)) >= 3)),
      'groups moved to the new nodes after the reports',
    );
    await closeAll(w);
  });

  it('a node whose session ended under markDeactivating still drains: it rejoins with a deactivating record', async () => {
    const w = world();
    w.autoReport = false;
    for (let i = 0; i < 3; i++) await startNode(w, `n${i}`, ZONES[i]!);
    await until(w.clock, () => coordinators(w).length === 1, 'a coordinator');
    const names = groupNames(6);
    await addGroups(w, names);
    await untilDesired(w, (m) => names.every((n) => m.has(n)), 'every group placed');
    const victim = [...w.nodes.keys()].find((id) => !w.nodes.get(id)!.isCoordinator)!;
    const c = w.nodes.get(victim)!;
    // Its session ends on the server (a pause past the TTL) before it has noticed.
    w.server.endSession(c.sessionId!);
    await drive(w.clock, c.markDeactivating());
    await untilDesired(
      w,
      (m) => names.every((n) => !m.get(n)!.rec.members.includes(victim)),
      `no group on ${victim} (its new record says deactivating)`,
    );
    await closeAll(w);
  });

  it('a stale coordinator writes nothing (deposed, and it stops); the new one writes under its own token', async () => {
    const clock = new VirtualClock(1000);
    const server = new MemoryServer({ clock });
    const store = new MemoryStore({ server, clock });
    const election = new Election(store, { prefix: keys.coordinator });
    const sA = await drive(clock, store.openSession({ ttlMs: 2000 }));
    const la = await drive(clock, election.campaign(sA, 'a'));
    const node = await drive(clock, store.openSession({ ttlMs: 2000 }));
    await drive(clock, registerNode(store, keys, node, { id: 'n1', address: 'h:1', incarnation: 'i' }));
    await drive(clock, addGroup(store, keys, 'g1', { replicas: 1, machine: 'kv' }));
    // A's session ends (a long pause, say) and B is elected; A's process still believes it leads.
    await drive(clock, sA.close());
    const sB = await drive(clock, store.openSession({ ttlMs: 2000 }));
    const lb = await drive(clock, election.campaign(sB, 'b'));
    expect(lb.token).toBeGreaterThan(la.token);
    const make = (l: typeof la, onDeposed: () => void): FleetCoordinator =>
      new FleetCoordinator({
        store,
        keys,
        clock,
        leadership: l,
        settings: { gracePeriodMs: 0, maxWritesPerRound: 100 },
        ownsNow: () => true,
        onDeposed,
        events: { placed: () => undefined, error: (e) => expect.fail(String(e)) },
      });
    let deposed = 0;
    const stale = make(la, () => deposed++);
    await drive(clock, stale.start());
    await until(clock, () => deposed === 1, 'the stale coordinator is deposed');
    expect(stale.lastRound.outcome).toBe('deposed');
    expect(await drive(clock, store.get(keys.desiredOf('g1')))).toBeUndefined();
    await drive(clock, stale.stop());
    const fresh = make(lb, () => expect.fail('the elected coordinator is not deposed'));
    await drive(clock, fresh.start());
    await until(clock, () => fresh.lastRound.outcome === 'written', 'the new coordinator wrote');
    const kv = await drive(clock, store.get(keys.desiredOf('g1')));
    expect(decodeDesired(keys, kv!.key, kv!.value)).toMatchObject({ members: ['n1'], leader: 'n1', token: lb.token });
    await drive(clock, fresh.stop());
  });

  it('a stale write (a desired record changed after the read) is refused, and the next round reads again and writes', async () => {
    const clock = new VirtualClock(1000);
    const server = new MemoryServer({ clock });
    const store = new MemoryStore({ server, clock });
    const node = await drive(clock, store.openSession({ ttlMs: 2000 }));
    await drive(clock, registerNode(store, keys, node, { id: 'n1', address: 'h:1', incarnation: 'i' }));
    await drive(clock, addGroup(store, keys, 'g1', { replicas: 1, machine: 'kv' }));
    const s = await drive(clock, store.openSession({ ttlMs: 2000 }));
    const leadership = await drive(clock, new Election(store, { prefix: keys.coordinator }).campaign(s, 'c'));
    // The first desired write races with another write of the same key (landing just before it).
    let raced = false;
    let refused = 0;
    const racing = new Proxy(store, {
      get(target, prop, receiver) {
        if (prop !== 'txn') {
          const v: unknown = Reflect.get(target, prop, receiver);
          return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
        }
        return async (txn: Parameters<MemoryStore['txn']>[0]) => {
          if (!raced && txn.then.some((op) => op.op === 'put' && op.key === keys.desiredOf('g1'))) {
            raced = true;
            const other = encodeRecord({
              name: 'g1',
              generation: 1,
              members: ['n9'],
              leader: 'n9',
              token: 1,
              initial: ['n9'],
              version: 2, // created long ago (a version-1 record without a report would be kept: being created)
            });
            await target.txn({ compare: [], then: [{ op: 'put', key: keys.desiredOf('g1'), value: other }] });
          }
          const r = await target.txn(txn);
          if (!r.succeeded) refused++;
          return r;
        };
      },
    });
    const c = new FleetCoordinator({
      store: racing,
      keys,
      clock,
      leadership,
      settings: { gracePeriodMs: 0, maxWritesPerRound: 100 },
      ownsNow: () => true,
      onDeposed: () => expect.fail('not deposed: the guard holds'),
      events: { placed: () => undefined, error: (e) => expect.fail(String(e)) },
    });
    await drive(clock, c.start());
    await until(clock, () => raced && c.lastRound.outcome === 'written', 'written after the race');
    expect(refused).toBe(1);
    const kv = await drive(clock, store.get(keys.desiredOf('g1')));
    expect(decodeDesired(keys, kv!.key, kv!.value)).toMatchObject({ members: ['n1'], token: leadership.token });
    await drive(clock, c.stop());
  });

  it('a group added later is placed by the next round, and nothing else changes members', async () => {
    const w = world();
    for (let i = 0; i < 3; i++) await startNode(w, `n${i}`, ZONES[i]!);
    const names = groupNames(9);
    await addGroups(w, names);
    const before = await untilDesired(w, (m) => names.every((n) => m.has(n)), 'every group placed');
    await addGroups(w, ['late']);
    const after = await untilDesired(w, (m) => m.has('late'), 'the late group placed');
    expect(after.get('late')!.rec.members).toHaveLength(3);
    for (const n of names) expect(new Set(after.get(n)!.rec.members)).toEqual(new Set(before.get(n)!.rec.members));
    await closeAll(w);
  });

  it('a corrupt desired record: that group is skipped and reported once, never overwritten; the others go on', async () => {
    const w = world();
    const junk = '{"v":1,"name":"g03","members":"not a list"}';
    await drive(w.clock, w.admin.txn({ compare: [], then: [{ op: 'put', key: keys.desiredOf('g03'), value: junk }] }));
    const names = groupNames(8);
    await addGroups(w, names);
    for (let i = 0; i < 3; i++) await startNode(w, `n${i}`, ZONES[i]!);
    const others = names.filter((n) => n !== 'g03');
    await untilDesired(w, (m) => others.every((n) => m.has(n)), 'every other group placed');
    await until(w.clock, () => w.errors.some((e) => e.context === 'fleet coordinator: groups skipped'), 'reported');
    // Several more rounds (ticks): the record stays as it was, and the skip is not reported again.
    await w.clock.runFor(3000);
    expect((await drive(w.clock, w.admin.get(keys.desiredOf('g03'))))?.value).toBe(junk);
    const skips = w.errors.filter((e) => e.context === 'fleet coordinator: groups skipped');
    expect(skips).toHaveLength(1);
    expect(skips[0]!.error).toBeInstanceOf(CorruptDataError);
    expect((skips[0]!.error as CorruptDataError).key).toBe(keys.desiredOf('g03'));
    // Repaired (deleted): the next round places it.
    await drive(w.clock, w.admin.txn({ compare: [], then: [{ op: 'delete', key: keys.desiredOf('g03') }] }));
    await untilDesired(w, (m) => m.has('g03'), 'g03 placed after the repair');
    await closeAll(w);
  });

  it('writes at most maxDesiredWritesPerRound groups per round (first placements: four times as many), the rest in the next rounds', async () => {
    const w = world();
    const names = groupNames(60);
    await addGroups(w, names);
    const placed: { written: number; pending: number }[] = [];
    for (let i = 0; i < 3; i++) {
      await startNode(w, `n${i}`, ZONES[i]!, { maxDesiredWritesPerRound: 7 }, (c) =>
        c.on('placed', (e) => placed.push(e)),
      );
    }
    await untilDesired(w, (m) => names.every((n) => m.has(n)), 'every group placed');
    expect(placed.length).toBeGreaterThanOrEqual(3);
    // The first node is elected alone and places all 60 on itself, 4 × 7 a round (first placements move nothing);
    // the later joins move some again, 7 a round at most.
    expect(placed.slice(0, 3).map((p) => p.written)).toEqual([28, 28, 4]);
    expect(placed.slice(0, 3).map((p) => p.pending)).toEqual([32, 4, 0]);
    for (const p of placed.slice(3)) expect(p.written).toBeLessThanOrEqual(7);
    await closeAll(w);
  });
});

// ---- the pure decision ------------------------------------------------------------------------

function viewOf(
  nodes: readonly { id: string; zone: string; state?: 'active' | 'deactivating' }[],
  groups: readonly { name: string; desired?: { members: string[]; leader: string; version?: number } }[],
  unreadable: string[] = [],
): FleetView {
  return {
    claims: new Map(),
    nodes: new Map(
      nodes.map((n) => [
        n.id,
        {
          id: n.id,
          zone: n.zone,
          weight: 1,
          address: 'h:1',
          state: n.state ?? 'active',
          incarnation: 'i',
          sessionId: 's',
          registeredRevision: 1,
        },
      ]),
    ),
    groups: new Map(
      groups.map((g, i) => [
        g.name,
        {
          name: g.name,
          replicas: 3,
          machine: 'kv',
          generation: i + 1,
          revision: i + 1,
          desired:
            g.desired === undefined
              ? undefined
              : { name: g.name, generation: i + 1, token: 1, initial: g.desired.members, version: 2, ...g.desired },
          desiredRevision: g.desired === undefined ? 0 : 100 + i,
          observed: undefined,
          observedRevision: 0,
        },
      ]),
    ),
    meta: undefined,
    metaRevision: 0,
    coordinator: undefined,
    unreadable,
    stale: [],
    revision: 1000,
  };
}

describe('decideFleetRound (pure)', () => {
  const settings: FleetCoordinatorSettings = { maxWritesPerRound: 100, gracePeriodMs: 0 };
  const three = [
    { id: 'a', zone: 'z1' },
    { id: 'b', zone: 'z2' },
    { id: 'c', zone: 'z3' },
  ];

  it('writes nothing when the desired records already match (member order aside)', () => {
    const first = decideFleetRound(
      viewOf(three, [{ name: 'g' }]),
      (n) => keys.desiredOf(n),
      settings,
      newFleetCoordinatorMemory(),
      0,
    );
    expect(first.writes).toHaveLength(1);
    const w = first.writes[0]!;
    const shuffled = [w.leader, ...w.members.filter((m) => m !== w.leader).reverse()];
    const again = decideFleetRound(
      viewOf(three, [{ name: 'g', desired: { members: shuffled, leader: w.leader } }]),
      (n) => keys.desiredOf(n),
      settings,
      first.memory,
      10,
    );
    expect(again.writes).toEqual([]);
    expect(again.pending).toBe(0);
  });

  it('orders by urgency under the bound: unplaced groups, then groups on a gone node, then the rest', () => {
    const nodes = [...three, { id: 'd', zone: 'z1' }];
    const view = viewOf(nodes, [
      { name: 'a-rebalance', desired: { members: ['a', 'b', 'c'], leader: 'a' } },
      { name: 'b-gone', desired: { members: ['x', 'b', 'c'], leader: 'b' } },
      { name: 'c-new' },
    ]);
    const d = decideFleetRound(
      view,
      (n) => keys.desiredOf(n),
      { ...settings, maxWritesPerRound: 2 },
      newFleetCoordinatorMemory(),
      0,
    );
    expect(d.writes.map((e) => e.name)).toEqual(['c-new', 'b-gone']);
    const a = d.placement.groups.find((g) => g.name === 'a-rebalance')!;
    const aChanged = a.leader !== 'a' || [...a.members].sort().join() !== 'a,b,c';
    expect(d.pending).toBe(aChanged ? 1 : 0);
  });

  it('writes first placements four times the bound a round, and then moves only up to the bound', () => {
    const nodes = [...three, { id: 'd', zone: 'z1' }];
    const fresh = Array.from({ length: 10 }, (_, i) => ({ name: `new-${String(i).padStart(2, '0')}` }));
    const gone = { name: 'z-gone', desired: { members: ['x', 'b', 'c'], leader: 'b' } };
    const bound = { ...settings, maxWritesPerRound: 2 };
    const d = decideFleetRound(
      viewOf(nodes, [...fresh, gone]),
      (n) => keys.desiredOf(n),
      bound,
      newFleetCoordinatorMemory(),
      0,
    );
    // 10 new groups, 4 × 2 of them now; the group on a gone node waits (first placements come first).
    expect(d.writes.map((e) => e.name)).toEqual(fresh.slice(0, 8).map((g) => g.name));
    expect(d.pending).toBe(3);
    // Fewer new groups than the bound: the bound as before, the most urgent first.
    const few = decideFleetRound(
      viewOf(nodes, [fresh[0]!, gone]),
      (n) => keys.desiredOf(n),
      bound,
      newFleetCoordinatorMemory(),
      0,
    );
    expect(few.writes.map((e) => e.name)).toEqual(['new-00', 'z-gone']);
  });

  it('keeps a vanished active node placed for its grace period, and a deactivating one not at all', () => {
    const s = { ...settings, gracePeriodMs: 1000 };
    const k = (n: string): string => keys.desiredOf(n);
    const four = [...three, { id: 'd', zone: 'z1' }];
    const groups = groupNames(12).map((name) => ({ name }));
    const r0 = decideFleetRound(viewOf(four, groups), k, s, newFleetCoordinatorMemory(), 0);
    const placed = groups.map((g) => ({
      name: g.name,
      desired: {
        members: [...r0.placement.groups.find((p) => p.name === g.name)!.members],
        leader: r0.placement.groups.find((p) => p.name === g.name)!.leader!,
      },
    }));
    expect(placed.some((g) => g.desired.members.includes('d'))).toBe(true);
    // d vanishes: nothing changes until its grace ends, and the decision says when that is.
    const r1 = decideFleetRound(viewOf(three, placed), k, s, r0.memory, 100);
    expect(r1.writes).toEqual([]);
    expect(r1.wakeAtMs).toBe(1100);
    const r2 = decideFleetRound(viewOf(three, placed), k, s, r1.memory, 1100);
    expect(r2.writes.length).toBeGreaterThan(0);
    expect(r2.writes.every((e) => !e.members.includes('d'))).toBe(true);
    expect(r2.wakeAtMs).toBeUndefined();
    // Deactivating, then gone: no grace (it drained on purpose).
    const r3 = decideFleetRound(
      viewOf([...three, { id: 'd', zone: 'z1', state: 'deactivating' }], placed),
      k,
      s,
      r0.memory,
      0,
    );
    const r4 = decideFleetRound(viewOf(three, placed), k, s, r3.memory, 10);
    expect(r4.writes.length).toBe(r3.writes.length);
    expect(r4.wakeAtMs).toBeUndefined();
  });

  it('a new coordinator holds the groups of a desired member it never saw live until a grace period ends', () => {
    const s = { ...settings, gracePeriodMs: 1000 };
    const k = (n: string): string => keys.desiredOf(n);
    const view = viewOf(three, [
      { name: 'g1', desired: { members: ['a', 'b', 'x'], leader: 'a' } },
      { name: 'g2', desired: { members: ['a', 'b', 'c'], leader: 'b' } },
      { name: 'g3' },
    ]);
    const r0 = decideFleetRound(view, k, s, newFleetCoordinatorMemory(), 500);
    expect(r0.writes.map((e) => e.name)).not.toContain('g1');
    expect(r0.writes.map((e) => e.name)).toContain('g3');
    expect(r0.held).toBe(1);
    expect(r0.wakeAtMs).toBe(1500);
    const r1 = decideFleetRound(view, k, s, r0.memory, 1500);
    expect(r1.held).toBe(0);
    expect(r1.writes.find((e) => e.name === 'g1')?.members).toEqual(expect.arrayContaining(['a', 'b', 'c']));
    // Later rounds never seed again: an id that is in no record of a live node stays unknown only from round one.
    expect(decideFleetRound(view, k, s, r1.memory, 1600).held).toBe(0);
  });

  it('keeps a group not founded yet on its first desired record until its first leader reports', () => {
    const k = (n: string): string => keys.desiredOf(n);
    // Three groups all led by a: balance would move two leaders away.
    const names = ['g1', 'g2', 'g3'];
    const unfounded = viewOf(
      three,
      names.map((name) => ({ name, desired: { members: ['a', 'b', 'c'], leader: 'a', version: 1 } })),
    );
    const r0 = decideFleetRound(unfounded, k, settings, newFleetCoordinatorMemory(), 500);
    expect(r0.writes).toEqual([]);
    expect(r0.founding).toBe(2);
    expect(r0.wakeAtMs).toBe(500 + FOUNDING_RECHECK_MS);
    // Once their first leader reported, the rebalance is written.
    const reported: FleetView = {
      ...unfounded,
      groups: new Map(
        [...unfounded.groups].map(([name, g]) => [
          name,
          {
            ...g,
            observed: {
              name,
              generation: g.generation,
              reporter: 'a',
              term: 1,
              leader: 'a',
              voters: ['a', 'b', 'c'],
              learners: [],
              membershipIndex: 0,
              committed: 1,
              lag: {},
              status: 'converged' as const,
              detail: '',
            },
          },
        ]),
      ),
    };
    const r1 = decideFleetRound(reported, k, settings, r0.memory, 600);
    expect(r1.writes).toHaveLength(2);
    expect(r1.founding).toBe(0);
    expect(new Set(r1.writes.map((e) => e.leader))).toEqual(new Set(['b', 'c']));
    // A member that is gone is replaced at once, founded or not (the group cannot be created with it).
    const gone = viewOf(three, [{ name: 'g', desired: { members: ['a', 'b', 'x'], leader: 'a' } }]);
    const r2 = decideFleetRound(gone, k, settings, newFleetCoordinatorMemory(), 0);
    expect(r2.writes.map((e) => e.name)).toEqual(['g']);
    expect(r2.founding).toBe(0);
  });

  it('skips a group whose desired key is unreadable, and does not place without nodes', () => {
    const k = (n: string): string => keys.desiredOf(n);
    const d = decideFleetRound(
      viewOf(three, [{ name: 'g1' }, { name: 'g2' }], [keys.desiredOf('g1')]),
      k,
      settings,
      newFleetCoordinatorMemory(),
      0,
    );
    expect(d.writes.map((e) => e.name)).toEqual(['g2']);
    expect(d.skipped).toEqual([{ name: 'g1', key: keys.desiredOf('g1') }]);
    const none = decideFleetRound(viewOf([], [{ name: 'g1' }]), k, settings, newFleetCoordinatorMemory(), 0);
    expect(none.writes).toEqual([]);
    expect(none.unplaced).toBe(1);
  });

  it('places a new group only once minNodes nodes are active; placed groups are never held by it', () => {
    const k = (n: string): string => keys.desiredOf(n);
    const s = { ...settings, minNodes: 3 };
    const placed = { name: 'old', desired: { members: ['a', 'x'], leader: 'a' } };
    const two = decideFleetRound(
      viewOf(three.slice(0, 2), [{ name: 'new' }, placed]),
      k,
      s,
      newFleetCoordinatorMemory(),
      0,
    );
    expect(two.writes.map((e) => e.name)).toEqual(['old']);
    expect(two.unplaced).toBe(1);
    const all = decideFleetRound(viewOf(three, [{ name: 'new' }]), k, s, newFleetCoordinatorMemory(), 0);
    expect(all.writes.map((e) => e.name)).toEqual(['new']);
  });

  it('starts a seeded generation (unsafe recovery) on its seed node alone, once that node is live', () => {
    const k = (n: string): string => keys.desiredOf(n);
    const view = viewOf(three, [{ name: 'g' }]);
    const g = view.groups.get('g')!;
    const seeded = (seedNode: string): FleetView => ({
      ...view,
      groups: new Map([
        ['g', { ...g, generation: 2, seed: { node: seedNode, generation: 1, initial: ['b', 'x', 'y'] } }],
      ]),
    });
    const d = decideFleetRound(seeded('b'), k, { ...settings, minNodes: 5 }, newFleetCoordinatorMemory(), 0);
    expect(d.writes).toEqual([{ name: 'g', members: ['b'], leader: 'b' }]);
    // The seed node is not live: nobody else holds the state, so nothing is placed.
    const gone = decideFleetRound(seeded('x'), k, settings, newFleetCoordinatorMemory(), 0);
    expect(gone.writes).toEqual([]);
    expect(gone.unplaced).toBe(1);
  });
});
