/**
 * The fleet's control-plane records on the store contract (src/protocol/fleet/keys.ts, io.ts), on the memory and
 * SQLite backends: round trips, corrupt records refused and never overwritten, the coordinator's guard, generations
 * never reused, node records tied to their sessions.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { createMemoryStore } from '../../src/backends/memory/index.js';
import { createSqliteStore } from '../../src/backends/sqlite/index.js';
import {
  CorruptDataError,
  FleetGroupExistsError,
  FleetGroupNotFoundError,
  InvalidArgumentError,
  LimitExceededError,
  NodeIdInUseError,
} from '../../src/errors.js';
import {
  addGroup,
  adoptGroup,
  claimGroup,
  deregisterNode,
  FleetRecordCache,
  fleetElection,
  placementInputOf,
  readFleetView,
  registerNode,
  removeGroup,
  reportObserved,
  reserveGenerations,
  writeDesired,
  type FleetView,
} from '../../src/protocol/fleet/io.js';
import {
  decodeGroup,
  decodeMeta,
  decodeNode,
  encodeRecord,
  FleetKeys,
  MAX_FLEET_GROUPS,
  parseRaftGroupId,
  groupRaftId,
  raftGroupId,
  runsMachine,
  sameIncarnation,
  validateFleetGroupName,
  wasIssued,
  type ObservedRecord,
} from '../../src/protocol/fleet/keys.js';
import type { Store } from '../../src/store/contract.js';
import { placeGroups } from '../../src/placement/fleet.js';

const dir = mkdtempSync(join(tmpdir(), 'rb-fleet-io-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
let dbs = 0;

const backends: [string, () => Promise<Store>][] = [
  ['memory', () => Promise.resolve(createMemoryStore())],
  ['sqlite', () => createSqliteStore({ path: join(dir, `fleet-${++dbs}.db`) })],
];

const TTL = { ttlMs: 5000 };

function collect(): { errors: CorruptDataError[]; report: (e: CorruptDataError) => void } {
  const errors: CorruptDataError[] = [];
  return { errors, report: (e) => errors.push(e) };
}

async function view(store: Store, keys: FleetKeys): Promise<FleetView & { errors: CorruptDataError[] }> {
  const c = collect();
  const v = await readFleetView(store, keys, c.report);
  return { ...v, errors: c.errors };
}

function observed(name: string, generation: number, term: number): ObservedRecord {
  return {
    name,
    generation,
    reporter: 'n1',
    term,
    leader: 'n1',
    voters: ['n1', 'n2', 'n3'],
    learners: [],
    membershipIndex: 1,
    committed: 10,
    lag: { n2: 0, n3: 4 },
    status: 'moving',
    detail: 'catching up',
  };
}

describe('fleet names and raft group ids', () => {
  it('validates group names and round-trips raft group ids', () => {
    expect(validateFleetGroupName('orders/eu:1.a_b-c')).toBe('orders/eu:1.a_b-c');
    for (const bad of ['', 'a b', 'a#1', 'x'.repeat(81), 7]) {
      expect(() => validateFleetGroupName(bad)).toThrow(InvalidArgumentError);
    }
    const id = raftGroupId('orders:2', 17);
    expect(id).toBe('orders:2:17');
    expect(parseRaftGroupId(id)).toEqual({ name: 'orders:2', generation: 17 });
    expect(parseRaftGroupId('orders')).toBeUndefined();
    expect(parseRaftGroupId('orders:0')).toBeUndefined();
    expect(() => raftGroupId('orders', 0)).toThrow(InvalidArgumentError);
    // With a tag (every record of this release has one): after the generation, never holding a `:`.
    const tagged = raftGroupId('orders:2', 17, 'a_B-3xYz');
    expect(tagged).toBe('orders:2:17.a_B-3xYz');
    expect(parseRaftGroupId(tagged)).toEqual({ name: 'orders:2', generation: 17, tag: 'a_B-3xYz' });
    expect(parseRaftGroupId('orders:17.short')).toBeUndefined();
    expect(parseRaftGroupId('orders:17.a_B-3xYz9')).toBeUndefined();
    for (const bad of ['short', 'a_B-3xYz9', 'a.B-3xYz', 'a:B-3xYz']) {
      expect(() => raftGroupId('orders', 1, bad)).toThrow(InvalidArgumentError);
    }
    // Every id a valid name makes is a valid Raft group name (1–110 of [A-Za-z0-9._:/-]).
    expect(raftGroupId('x'.repeat(80), Number.MAX_SAFE_INTEGER, 'a_B-3xYz')).toMatch(/^[A-Za-z0-9._:/-]{1,110}$/);
  });

  it("gives a record's raft group id (kept per record object; a changed object gets its new id)", () => {
    const g: { name: string; generation: number; tag?: string } = { name: 'orders', generation: 3, tag: 'a_B-3xYz' };
    expect(groupRaftId(g)).toBe('orders:3.a_B-3xYz');
    expect(groupRaftId(g)).toBe('orders:3.a_B-3xYz');
    g.generation = 4;
    expect(groupRaftId(g)).toBe('orders:4.a_B-3xYz');
    delete g.tag;
    expect(groupRaftId(g)).toBe('orders:4');
    g.name = 'orders:4';
    g.generation = 1;
    expect(groupRaftId(g)).toBe('orders:4:1');
    g.tag = 'bad';
    expect(() => groupRaftId(g)).toThrow(InvalidArgumentError);
  });

  it("decodes a recovered group's seed, and refuses a seed that cannot be one", () => {
    const keys = new FleetKeys('f');
    const rec = (seed: unknown): string => encodeRecord({ name: 'g', replicas: 3, machine: 'kv', generation: 4, seed });
    const seed = { node: 'n2', generation: 3, initial: ['n1', 'n2', 'n3'] };
    expect(decodeGroup(keys, keys.group('g'), rec(seed)).seed).toEqual(seed);
    expect(decodeGroup(keys, keys.group('g'), rec(undefined)).seed).toBeUndefined();
    for (const bad of [null, 'n2', { ...seed, generation: 4 }, { ...seed, initial: [] }, { ...seed, node: '' }]) {
      expect(() => decodeGroup(keys, keys.group('g'), rec(bad)), JSON.stringify(bad)).toThrow(CorruptDataError);
    }
  });

  it("decodes a group's incarnation, and refuses one that cannot be one; a record without one (an older release) has none", () => {
    const keys = new FleetKeys('f');
    const rec = (incarnation: unknown): string =>
      encodeRecord({ name: 'g', replicas: 3, machine: 'kv', generation: 4, incarnation });
    expect(decodeGroup(keys, keys.group('g'), rec('AbCd_-0123456789')).incarnation).toBe('AbCd_-0123456789');
    expect(decodeGroup(keys, keys.group('g'), rec(undefined))).not.toHaveProperty('incarnation');
    for (const bad of [null, 7, '', 'short', 'has a space!', 'x'.repeat(65), ['AbCd_-0123456789']]) {
      expect(() => decodeGroup(keys, keys.group('g'), rec(bad)), JSON.stringify(bad)).toThrow(CorruptDataError);
    }
    // Undefined (a record or a catalog of an older release) matches any; two known ones only when equal.
    expect(sameIncarnation(undefined, 'AbCd_-0123456789')).toBe(true);
    expect(sameIncarnation('AbCd_-0123456789', undefined)).toBe(true);
    expect(sameIncarnation('AbCd_-0123456789', 'AbCd_-0123456789')).toBe(true);
    expect(sameIncarnation('AbCd_-0123456789', 'AbCd_-9876543210')).toBe(false);
  });

  it("decodes a node's state machines; a record without them (an older release) runs every machine", () => {
    const keys = new FleetKeys('f');
    const base = { id: 'n1', zone: 'a', weight: 1, address: 'h:1', state: 'active', incarnation: 'i' };
    const old = decodeNode(keys, keys.node('n1'), encodeRecord(base));
    expect(old.machines).toBeUndefined();
    expect(runsMachine(old, 'anything')).toBe(true);
    const rec = decodeNode(keys, keys.node('n1'), encodeRecord({ ...base, machines: ['queue', 'kv'] }));
    expect(rec.machines).toEqual(['kv', 'queue']);
    expect(runsMachine(rec, 'kv')).toBe(true);
    expect(runsMachine(rec, 'lock')).toBe(false);
    expect(decodeNode(keys, keys.node('n1'), encodeRecord({ ...base, machines: [] })).machines).toEqual([]);
    for (const bad of ['kv', [1], ['kv', 'kv'], [''], Array.from({ length: 300 }, (_, i) => `m${i}`)]) {
      expect(() => decodeNode(keys, keys.node('n1'), encodeRecord({ ...base, machines: bad })), String(bad)).toThrow(
        CorruptDataError,
      );
    }
  });
});

describe.each(backends)('fleet control plane on %s', (_name, open) => {
  it('round-trips nodes, groups, desired placement and observed state', async () => {
    const store = await open();
    try {
      const keys = new FleetKeys('f1');
      const s1 = await store.openSession(TTL);
      const s2 = await store.openSession(TTL);
      await registerNode(store, keys, s1, {
        id: 'n1',
        zone: 'a',
        weight: 2,
        address: '127.0.0.1:7001',
        incarnation: 'i1',
      });
      await registerNode(store, keys, s2, {
        id: 'n2',
        zone: 'b',
        address: '127.0.0.1:7002',
        incarnation: 'i2',
        machines: ['kv', 'counter'],
      });
      const g1 = await addGroup(store, keys, 'orders', { replicas: 3, machine: 'kv' });
      const g2 = await addGroup(store, keys, 'users/eu', { replicas: 5, machine: 'counter' });
      expect(g2.generation).toBeGreaterThan(g1.generation);

      const lead = await fleetElection(store, keys).campaign(s1, 'n1');
      let v = await view(store, keys);
      expect(v.coordinator?.token).toBe(lead.token);
      const w = await writeDesired(store, keys, lead.guard, v, [
        { name: 'orders', members: ['n2', 'n1'], leader: 'n1' },
        { name: 'users/eu', members: ['n2'], leader: 'n2' },
      ]);
      expect(w).toEqual({ outcome: 'written', written: 2 });
      expect(await reportObserved(store, keys, observed('orders', g1.generation, 3))).toBe('written');

      v = await view(store, keys);
      expect(v.errors).toEqual([]);
      expect(v.unreadable).toEqual([]);
      expect(v.stale).toEqual([]);
      expect(v.meta).toMatchObject({
        lastGeneration: g2.generation,
        groups: 2,
        id: expect.stringMatching(/^[A-Za-z0-9_-]{16}$/),
      });
      expect(v.nodes.get('n1')).toMatchObject({
        id: 'n1',
        zone: 'a',
        weight: 2,
        address: '127.0.0.1:7001',
        state: 'active',
        incarnation: 'i1',
        sessionId: s1.id,
      });
      expect(v.nodes.get('n2')).toMatchObject({ zone: 'b', weight: 1, machines: ['counter', 'kv'] });
      expect(v.nodes.get('n1')!.machines).toBeUndefined();
      // Placement input: each active node with its machines, each group with its machine.
      const input = placementInputOf(v);
      expect(input.nodes.find((n) => n.id === 'n2')!.machines).toEqual(['counter', 'kv']);
      expect(input.groups.find((g) => g.name === 'orders')!.machine).toBe('kv');
      const orders = v.groups.get('orders')!;
      expect(orders).toMatchObject({ name: 'orders', replicas: 3, machine: 'kv', generation: g1.generation });
      expect(orders.desired).toEqual({
        name: 'orders',
        generation: g1.generation,
        members: ['n1', 'n2'],
        leader: 'n1',
        token: lead.token,
        initial: ['n1', 'n2'],
        version: 1,
      });
      expect(orders.observed).toEqual(observed('orders', g1.generation, 3));
      expect(orders.observedRevision).toBeGreaterThan(0);
      expect(v.groups.get('users/eu')!.desired?.members).toEqual(['n2']);
      expect(v.groups.get('users/eu')!.observed).toBeUndefined();

      // A late report from an older term does not replace a newer one; a newer term does.
      expect(await reportObserved(store, keys, observed('orders', g1.generation, 2))).toBe('stale');
      expect(await reportObserved(store, keys, observed('orders', g1.generation, 4))).toBe('written');
      expect((await view(store, keys)).groups.get('orders')!.observed?.term).toBe(4);
      // Bad input is refused before anything is written.
      await expect(
        reportObserved(store, keys, { ...observed('orders', g1.generation, 5), status: 'odd' as 'stuck' }),
      ).rejects.toThrow(InvalidArgumentError);
      await expect(
        writeDesired(store, keys, lead.guard, v, [{ name: 'orders', members: ['n2'], leader: 'n1' }]),
      ).rejects.toThrow(InvalidArgumentError);
      await expect(
        writeDesired(store, keys, lead.guard, v, [{ name: 'nope', members: ['n2'], leader: 'n2' }]),
      ).rejects.toThrow(InvalidArgumentError);
    } finally {
      await store.close();
    }
  });

  it('refuses a duplicate live group; a removed name added again gets a new generation', async () => {
    const store = await open();
    try {
      const keys = new FleetKeys('f2');
      const s = await store.openSession(TTL);
      const first = await addGroup(store, keys, 'orders', { replicas: 3, machine: 'kv' });
      await expect(addGroup(store, keys, 'orders', { replicas: 3, machine: 'kv' })).rejects.toThrow(
        FleetGroupExistsError,
      );
      await expect(addGroup(store, keys, 'other', { replicas: 0, machine: 'kv' })).rejects.toThrow(
        InvalidArgumentError,
      );
      const lead = await fleetElection(store, keys).campaign(s, 'n1');
      const before = await view(store, keys);
      await writeDesired(store, keys, lead.guard, before, [{ name: 'orders', members: ['n1'], leader: 'n1' }]);
      await reportObserved(store, keys, observed('orders', first.generation, 1));

      expect(await removeGroup(store, keys, 'orders')).toEqual(first);
      await expect(removeGroup(store, keys, 'orders')).rejects.toThrow(FleetGroupNotFoundError);
      const again = await addGroup(store, keys, 'orders', { replicas: 5, machine: 'kv2' });
      expect(again.generation).toBeGreaterThan(first.generation);
      expect(raftGroupId('orders', again.generation)).not.toBe(raftGroupId('orders', first.generation));
      // Each add draws the tag of its Raft group id.
      expect(first.tag).toMatch(/^[A-Za-z0-9_-]{8}$/);
      expect(again.tag).toMatch(/^[A-Za-z0-9_-]{8}$/);
      expect(again.tag).not.toBe(first.tag);

      const v = await view(store, keys);
      const g = v.groups.get('orders')!;
      expect(g).toMatchObject({ generation: again.generation, replicas: 5, machine: 'kv2', tag: again.tag });
      // The old generation's desired placement and observed state went with it, and cannot come back.
      expect(g.desired).toBeUndefined();
      expect(g.observed).toBeUndefined();
      expect(await reportObserved(store, keys, observed('orders', first.generation, 9))).toBe('gone');
      expect(
        (await writeDesired(store, keys, lead.guard, before, [{ name: 'orders', members: ['n1'], leader: 'n1' }]))
          .outcome,
      ).toBe('stale');
      expect((await view(store, keys)).groups.get('orders')!.desired).toBeUndefined();
      expect(v.meta).toMatchObject({ lastGeneration: again.generation, groups: 1, id: expect.any(String) });
    } finally {
      await store.close();
    }
  });

  it('refuses guarded writes from a stale coordinator (and the unguarded mutant does not)', async () => {
    const store = await open();
    try {
      const keys = new FleetKeys('f3');
      await addGroup(store, keys, 'g', { replicas: 1, machine: 'kv' });
      const sa = await store.openSession(TTL);
      const sb = await store.openSession(TTL);
      const election = fleetElection(store, keys);
      const a = await election.campaign(sa, 'a');
      const v = await view(store, keys);
      await sa.close();
      const b = await election.campaign(sb, 'b');
      expect(b.token).toBeGreaterThan(a.token);

      const entry = [{ name: 'g', members: ['n1'], leader: 'n1' }];
      expect(await writeDesired(store, keys, a.guard, v, entry)).toEqual({ outcome: 'deposed', written: 0 });
      expect((await view(store, keys)).groups.get('g')!.desired).toBeUndefined();
      // The mutant the simulator must catch: without the guard, the stale coordinator's write lands.
      const mutant = await writeDesired(store, keys, a.guard, v, entry, new Set(['unguarded-coordinator']));
      expect(mutant.outcome).toBe('written');
      expect((await view(store, keys)).groups.get('g')!.desired?.token).toBe(a.token);

      const v2 = await view(store, keys);
      expect(await writeDesired(store, keys, b.guard, v2, [{ name: 'g', members: ['n2'], leader: 'n2' }])).toEqual({
        outcome: 'written',
        written: 1,
      });
      expect((await view(store, keys)).groups.get('g')!.desired).toMatchObject({ members: ['n2'], token: b.token });
    } finally {
      await store.close();
    }
  });

  it('writes many desired placements in batches that fit a transaction', async () => {
    const store = await open();
    try {
      const keys = new FleetKeys('f4');
      const names = Array.from({ length: 150 }, (_, i) => `g${i}`);
      for (const n of names) await addGroup(store, keys, n, { replicas: 3, machine: 'kv' });
      const s = await store.openSession(TTL);
      const lead = await fleetElection(store, keys).campaign(s, 'c');
      const v = await view(store, keys);
      const entries = names.map((name, i) => ({ name, members: ['a', 'b', 'c'], leader: ['a', 'b', 'c'][i % 3]! }));
      expect(await writeDesired(store, keys, lead.guard, v, entries)).toEqual({ outcome: 'written', written: 150 });
      const after = await view(store, keys);
      expect([...after.groups.values()].filter((g) => g.desired !== undefined)).toHaveLength(150);
      expect(after.groups.get('g4')!.desired?.members[0]).toBe('b');
    } finally {
      await store.close();
    }
  });

  it('reports corrupt records by key and never overwrites them', async () => {
    const store = await open();
    try {
      const keys = new FleetKeys('f5');
      const s = await store.openSession(TTL);
      await addGroup(store, keys, 'ok', { replicas: 3, machine: 'kv' });
      await addGroup(store, keys, 'd', { replicas: 3, machine: 'kv' });
      await addGroup(store, keys, 'o', { replicas: 3, machine: 'kv' });
      const junk: [string, string][] = [
        [keys.group('bad'), 'not json'],
        [keys.desiredOf('d'), encodeRecord({ name: 'd', generation: 2, members: ['x'], leader: 'y', token: 1 })],
        [keys.observedOf('o'), '{"v":1}'],
        [
          keys.node('ghost'),
          encodeRecord({ id: 'other', zone: '', weight: 1, address: 'h:1', state: 'active', incarnation: 'i' }),
        ],
        // Well-formed, but attached to no session: no node wrote it, so it proves no node is alive.
        [
          keys.node('nosession'),
          encodeRecord({ id: 'nosession', zone: '', weight: 1, address: 'h:1', state: 'active', incarnation: 'i' }),
        ],
      ];
      for (const [key, value] of junk) await store.txn({ compare: [], then: [{ op: 'put', key, value }] });
      const lead = await fleetElection(store, keys).campaign(s, 'c');
      const v = await view(store, keys);
      expect(new Set(v.errors.map((e) => e.key))).toEqual(new Set(junk.map(([k]) => k)));
      expect(new Set(v.unreadable)).toEqual(new Set(junk.map(([k]) => k)));
      expect(v.errors.every((e) => e instanceof CorruptDataError && e.message.includes(e.key!))).toBe(true);
      expect([...v.groups.keys()].sort()).toEqual(['d', 'o', 'ok']);
      expect(v.nodes.size).toBe(0);

      await expect(addGroup(store, keys, 'bad', { replicas: 3, machine: 'kv' })).rejects.toThrow(CorruptDataError);
      await expect(removeGroup(store, keys, 'bad')).rejects.toThrow(CorruptDataError);
      await expect(
        writeDesired(store, keys, lead.guard, v, [
          { name: 'ok', members: ['n1'], leader: 'n1' },
          { name: 'd', members: ['n1'], leader: 'n1' },
        ]),
      ).rejects.toThrow(CorruptDataError);
      await expect(reportObserved(store, keys, observed('o', v.groups.get('o')!.generation, 1))).rejects.toThrow(
        CorruptDataError,
      );
      await expect(registerNode(store, keys, s, { id: 'ghost', address: 'h:2', incarnation: 'i' })).rejects.toThrow(
        CorruptDataError,
      );
      for (const [key, value] of junk) expect((await store.get(key))?.value).toBe(value);
      // Nothing of a refused batch was written either.
      expect((await view(store, keys)).groups.get('ok')!.desired).toBeUndefined();

      // Junk landing between the read and the write is not overwritten unread.
      const fresh = await view(store, keys);
      await store.txn({ compare: [], then: [{ op: 'put', key: keys.desiredOf('ok'), value: '[]' }] });
      const w = await writeDesired(store, keys, lead.guard, fresh, [{ name: 'ok', members: ['n1'], leader: 'n1' }]);
      expect(w.outcome).toBe('stale');
      expect((await store.get(keys.desiredOf('ok')))?.value).toBe('[]');

      // An unreadable meta record stops adds and removes (it holds the generation counter).
      await store.txn({ compare: [], then: [{ op: 'put', key: keys.meta, value: '{"v":1,"lastGeneration":-1}' }] });
      await expect(addGroup(store, keys, 'new', { replicas: 3, machine: 'kv' })).rejects.toThrow(CorruptDataError);
      await expect(removeGroup(store, keys, 'ok')).rejects.toThrow(CorruptDataError);
      expect((await view(store, keys)).unreadable).toContain(keys.meta);
      expect((await store.get(keys.meta))?.value).toBe('{"v":1,"lastGeneration":-1}');
    } finally {
      await store.close();
    }
  });

  it('a record cache reuses decoded records while their values are unchanged, and still reports corrupt ones', async () => {
    const store = await open();
    try {
      const keys = new FleetKeys('f9');
      await addGroup(store, keys, 'a', { replicas: 3, machine: 'kv' });
      await addGroup(store, keys, 'b', { replicas: 3, machine: 'kv' });
      const cache = new FleetRecordCache();
      const c = collect();
      const v1 = await readFleetView(store, keys, c.report, cache);
      const v2 = await readFleetView(store, keys, c.report, cache);
      expect(v2.groups.get('a')?.replicas).toBe(3);
      // Unchanged values are not decoded again; a changed value is; keys not seen in the last read are forgotten.
      let calls = 0;
      const kv = { key: 'k', value: 'v1', createRevision: 1, modRevision: 1, version: 1, sessionId: undefined };
      const dec = (): string => `decoded ${++calls}`;
      expect(cache.decode(kv, dec)).toBe('decoded 1');
      cache.endRead();
      expect(cache.decode(kv, dec)).toBe('decoded 1');
      expect(cache.decode({ ...kv, value: 'v2' }, dec)).toBe('decoded 2');
      cache.endRead();
      cache.endRead();
      expect(cache.decode({ ...kv, value: 'v2' }, dec)).toBe('decoded 3');
      // A changed value is decoded again: the report lands in the next view.
      await reportObserved(store, keys, observed('a', v1.groups.get('a')!.generation, 1));
      const v3 = await readFleetView(store, keys, c.report, cache);
      expect(v3.groups.get('a')?.observed?.term).toBe(1);
      await reportObserved(store, keys, observed('a', v1.groups.get('a')!.generation, 2));
      expect((await readFleetView(store, keys, c.report, cache)).groups.get('a')?.observed?.term).toBe(2);
      // Corrupt values are never cached: each read reports them.
      await store.txn({ compare: [], then: [{ op: 'put', key: keys.observedOf('b'), value: '{"v":1}' }] });
      await readFleetView(store, keys, c.report, cache);
      await readFleetView(store, keys, c.report, cache);
      expect(c.errors.filter((e) => e.message.includes(keys.observedOf('b')))).toHaveLength(2);
      // The same value under a store that lost its data (revisions start again) is still decoded right.
      await store.txn({ compare: [], then: [{ op: 'delete', key: keys.observedOf('b') }] });
      expect((await readFleetView(store, keys, c.report, cache)).groups.get('b')?.observed).toBeUndefined();
    } finally {
      await store.close();
    }
  });

  it("gives the meta record an id when it is first written and keeps it; adds one to an older release's record", async () => {
    const store = await open();
    try {
      const keys = new FleetKeys('f7');
      await addGroup(store, keys, 'a', { replicas: 1, machine: 'kv' });
      const id = decodeMeta(keys.meta, (await store.get(keys.meta))!.value).id;
      expect(id).toMatch(/^[A-Za-z0-9_-]{16}$/);
      await addGroup(store, keys, 'b', { replicas: 1, machine: 'kv' });
      await removeGroup(store, keys, 'a');
      expect(decodeMeta(keys.meta, (await store.get(keys.meta))!.value)).toEqual({
        lastGeneration: 2,
        groups: 1,
        id,
        issued: [[1, 2]],
      });
      // A record without an id (an older release) gets one at its next write, and keeps its counters.
      await store.txn({
        compare: [],
        then: [{ op: 'put', key: keys.meta, value: encodeRecord({ lastGeneration: 9, groups: 1 }) }],
      });
      await addGroup(store, keys, 'c', { replicas: 1, machine: 'kv' });
      const upgraded = decodeMeta(keys.meta, (await store.get(keys.meta))!.value);
      expect(upgraded).toMatchObject({
        lastGeneration: 10,
        groups: 2,
        id: expect.stringMatching(/^[A-Za-z0-9_-]{16}$/),
      });
      expect(upgraded.id).not.toBe(id);
      // A malformed id is corrupt data: refused by name, never overwritten.
      const bad = encodeRecord({ lastGeneration: 10, groups: 2, id: 'x y' });
      expect(() => decodeMeta(keys.meta, bad)).toThrow(CorruptDataError);
      await store.txn({ compare: [], then: [{ op: 'put', key: keys.meta, value: bad }] });
      await expect(addGroup(store, keys, 'd', { replicas: 1, machine: 'kv' })).rejects.toThrow(/field id/);
      expect((await store.get(keys.meta))?.value).toBe(bad);
    } finally {
      await store.close();
    }
  });

  it('a name claimed after a loss: adds refused until the write-back; a remove gives it up for good', async () => {
    const store = await open();
    try {
      const keys = new FleetKeys('f9');
      // Fresh records after a loss; node n2 keeps replicas of "a" (generation 4) and "b" (generation 6). It raises
      // the counter past them first: an add of another name then never takes their generations.
      expect(await reserveGenerations(store, keys, 6)).toBe(true);
      expect(await reserveGenerations(store, keys, 3)).toBe(true); // already past: nothing written
      const other = await addGroup(store, keys, 'other', { replicas: 1, machine: 'kv' });
      expect(other.generation).toBe(7);
      const reserved = decodeMeta(keys.meta, (await store.get(keys.meta))!.value);
      expect(reserved).toMatchObject({ lastGeneration: 7, issued: [[7, 7]] });
      expect(wasIssued(reserved, 4)).toBe(false);
      const claimA = { name: 'a', generation: 4, machine: 'kv', replicas: 3, incarnation: 'incarnA1', node: 'n2' };
      expect(await claimGroup(store, keys, claimA)).toBe('claimed');
      expect(await claimGroup(store, keys, { ...claimA, node: 'n3' })).toBe('taken'); // claimed already
      const refused = await addGroup(store, keys, 'a', { replicas: 3, machine: 'kv' }).catch((e: unknown) => e);
      expect(refused).toBeInstanceOf(FleetGroupExistsError);
      expect(refused).toMatchObject({ generation: 4, restoring: { node: 'n2' } });
      expect(String(refused)).toMatch(/on its way back.*node n2 keeps a replica/);
      const v = await readFleetView(store, keys, () => undefined);
      expect(v.claims.get('a')).toMatchObject({ generation: 4, node: 'n2' });
      // The write-back takes the claim away with it; the name is then a group like any other.
      const back = { name: 'a', generation: 4, machine: 'kv', members: ['n2', 'n1', 'n3'], leader: 'n2' };
      expect(await adoptGroup(store, keys, { ...back, incarnation: 'incarnA1', replicas: 3 })).toBe('adopted');
      expect(await store.get(keys.claimOf('a'))).toBeUndefined();
      await expect(addGroup(store, keys, 'a', { replicas: 3, machine: 'kv' })).rejects.toMatchObject({
        restoring: undefined,
      });

      // "b" can never come back (its majority is gone): the operator gives it up with a remove.
      expect(await claimGroup(store, keys, { ...claimA, name: 'b', generation: 6 })).toBe('claimed');
      expect(await removeGroup(store, keys, 'b')).toMatchObject({ name: 'b', generation: 6, replicas: 3 });
      expect(await store.get(keys.claimOf('b'))).toBeUndefined();
      // Given up for good: its generation counts as handed out (no claim, no write-back), and the name added again
      // gets a generation past it (never the same Raft group id as the replicas kept).
      expect(await claimGroup(store, keys, { ...claimA, name: 'b', generation: 6 })).toBe('taken');
      expect(await adoptGroup(store, keys, { ...back, name: 'b', generation: 6 })).toBe('issued');
      expect((await addGroup(store, keys, 'b', { replicas: 3, machine: 'kv' })).generation).toBe(8);
      // Nothing claimed, nothing to remove.
      await expect(removeGroup(store, keys, 'never')).rejects.toThrow(FleetGroupNotFoundError);
      // A claim for a generation the present records handed out is not written (it could never come back).
      expect(await claimGroup(store, keys, { ...claimA, name: 'c', generation: 8 })).toBe('taken');
      // An unreadable claim blocks the add, by name (nothing overwrites it); a remove clears it.
      await store.txn({ compare: [], then: [{ op: 'put', key: keys.claimOf('d'), value: '{junk' }] });
      await expect(addGroup(store, keys, 'd', { replicas: 1, machine: 'kv' })).rejects.toThrow(CorruptDataError);
      await removeGroup(store, keys, 'd');
      expect((await addGroup(store, keys, 'd', { replicas: 1, machine: 'kv' })).name).toBe('d');
    } finally {
      await store.close();
    }
  });

  it('writes a group back under its old generation only when the present records never handed it out', async () => {
    const store = await open();
    try {
      const keys = new FleetKeys('f8');
      // After a loss: fresh records; "x" added again got generation 1.
      await addGroup(store, keys, 'x', { replicas: 1, machine: 'kv' });
      const back = { name: 'old', generation: 7, machine: 'kv', members: ['n2', 'n1'], leader: 'n1' };
      expect(await adoptGroup(store, keys, back)).toBe('adopted');
      expect(await adoptGroup(store, keys, back)).toBe('adopted'); // again: written back already
      const v = await readFleetView(store, keys, () => undefined);
      expect(v.groups.get('old')).toMatchObject({ generation: 7, replicas: 2, machine: 'kv' });
      // Its leader first, version 2: no node may bootstrap an empty replica of it.
      expect(v.groups.get('old')?.desired).toMatchObject({ members: ['n1', 'n2'], leader: 'n1', version: 2 });
      expect(v.meta).toMatchObject({ lastGeneration: 7, groups: 2, issued: [[1, 1]] });
      // A generation handed out since, or a name taken since, never comes back.
      expect(await adoptGroup(store, keys, { ...back, name: 'y', generation: 1 })).toBe('issued');
      expect(await adoptGroup(store, keys, { ...back, name: 'x', generation: 5 })).toBe('taken');
      // The next add starts past it, and the handed-out ranges say so.
      expect((await addGroup(store, keys, 'z', { replicas: 1, machine: 'kv' })).generation).toBe(8);
      const meta = decodeMeta(keys.meta, (await store.get(keys.meta))!.value);
      expect(meta.issued).toEqual([
        [1, 1],
        [8, 8],
      ]);
      expect(wasIssued(meta, 7)).toBe(false);
      expect(wasIssued(meta, 8)).toBe(true);
      // Records of an older release (no ranges): every generation up to the counter counts as handed out.
      expect(wasIssued({ lastGeneration: 4, groups: 1 }, 4)).toBe(true);
      expect(() => decodeMeta(keys.meta, encodeRecord({ lastGeneration: 3, groups: 0, issued: [[2, 1]] }))).toThrow(
        CorruptDataError,
      );
      expect(() => decodeMeta(keys.meta, encodeRecord({ lastGeneration: 3, groups: 0, issued: [[1, 4]] }))).toThrow(
        CorruptDataError,
      );
    } finally {
      await store.close();
    }
  });

  it('gives each added group a new incarnation, and writes an orphan back with its own (another one is taken)', async () => {
    const store = await open();
    try {
      const keys = new FleetKeys('f9');
      const first = await addGroup(store, keys, 'a', { replicas: 1, machine: 'kv' });
      expect(first.incarnation).toMatch(/^[A-Za-z0-9_-]{8,64}$/);
      expect((await readFleetView(store, keys, () => undefined)).groups.get('a')?.incarnation).toBe(first.incarnation);
      await removeGroup(store, keys, 'a');
      const again = await addGroup(store, keys, 'a', { replicas: 1, machine: 'kv' });
      expect(again.incarnation).toMatch(/^[A-Za-z0-9_-]{8,64}$/);
      expect(again.incarnation).not.toBe(first.incarnation);

      // After a loss (fresh records), an orphan of generation 1 written back keeps its incarnation...
      const lost = new FleetKeys('f10');
      const back = {
        name: 'a',
        generation: 1,
        machine: 'kv',
        members: ['n1'],
        leader: 'n1',
        incarnation: first.incarnation,
      };
      expect(await adoptGroup(store, lost, back)).toBe('adopted');
      expect((await readFleetView(store, lost, () => undefined)).groups.get('a')?.incarnation).toBe(first.incarnation);
      expect(await adoptGroup(store, lost, back)).toBe('adopted'); // again: written back already, the same one
      // ...and another incarnation of the same name and generation (a name added again between two losses) is not it.
      expect(await adoptGroup(store, lost, { ...back, incarnation: again.incarnation })).toBe('taken');
      // A leader of an older release knows none: as before, the generation decides.
      expect(await adoptGroup(store, lost, { ...back, incarnation: undefined })).toBe('adopted');
      await expect(adoptGroup(store, lost, { ...back, name: 'b', incarnation: 'not one!' })).rejects.toBeInstanceOf(
        InvalidArgumentError,
      );
      // An orphan of an older release is written back without one.
      const old = new FleetKeys('f11');
      expect(await adoptGroup(store, old, { ...back, incarnation: undefined })).toBe('adopted');
      expect((await readFleetView(store, old, () => undefined)).groups.get('a')).not.toHaveProperty('incarnation');
      expect((await readFleetView(store, old, () => undefined)).groups.get('a')).not.toHaveProperty('tag');

      // The tag of the orphan's Raft group id goes back with it: the replicas' id and the record's are the same.
      const tagged = new FleetKeys('f12');
      expect(await adoptGroup(store, tagged, { ...back, tag: first.tag })).toBe('adopted');
      expect((await readFleetView(store, tagged, () => undefined)).groups.get('a')?.tag).toBe(first.tag);
      expect(await adoptGroup(store, tagged, { ...back, tag: first.tag })).toBe('adopted');
      // Another Raft group of that name and generation (another tag, or none) is not it.
      expect(await adoptGroup(store, tagged, { ...back, tag: again.tag })).toBe('taken');
      expect(await adoptGroup(store, tagged, { ...back, tag: undefined })).toBe('taken');
      await expect(adoptGroup(store, tagged, { ...back, name: 'c', tag: 'bad tag' })).rejects.toBeInstanceOf(
        InvalidArgumentError,
      );
    } finally {
      await store.close();
    }
  });

  it('caps the groups of a fleet', async () => {
    const store = await open();
    try {
      const keys = new FleetKeys('f6');
      const full = encodeRecord({ lastGeneration: 7, groups: MAX_FLEET_GROUPS });
      await store.txn({ compare: [], then: [{ op: 'put', key: keys.meta, value: full }] });
      await expect(addGroup(store, keys, 'one-more', { replicas: 3, machine: 'kv' })).rejects.toThrow(
        LimitExceededError,
      );
      expect(await store.get(keys.group('one-more'))).toBeUndefined();
    } finally {
      await store.close();
    }
  });

  it('ties node records to their sessions: one live process per id, gone when it dies', async () => {
    const store = await open();
    try {
      const keys = new FleetKeys('f7');
      const s1 = await store.openSession(TTL);
      const s2 = await store.openSession(TTL);
      const node = { id: 'n1', zone: 'a', address: '127.0.0.1:7001', incarnation: 'first' };
      const rev1 = await registerNode(store, keys, s1, node);
      await expect(registerNode(store, keys, s2, { ...node, incarnation: 'second' })).rejects.toThrow(NodeIdInUseError);
      // The node updates its own record (draining), same registration.
      expect(await registerNode(store, keys, s1, { ...node, state: 'deactivating' })).toBe(rev1);
      expect((await view(store, keys)).nodes.get('n1')).toMatchObject({
        state: 'deactivating',
        registeredRevision: rev1,
      });

      await s1.close(); // the node dies: its session ends and its record goes with it
      expect((await view(store, keys)).nodes.has('n1')).toBe(false);
      const rev2 = await registerNode(store, keys, s2, { ...node, incarnation: 'second' });
      expect(rev2).toBeGreaterThan(rev1);
      expect((await view(store, keys)).nodes.get('n1')).toMatchObject({ incarnation: 'second', sessionId: s2.id });
      await expect(registerNode(store, keys, s2, { ...node, weight: 0 })).rejects.toThrow(InvalidArgumentError);
    } finally {
      await store.close();
    }
  });

  it('places from the view and writes the placement back (a coordinator round)', async () => {
    const store = await open();
    try {
      const keys = new FleetKeys('f8');
      const sessions = await Promise.all([0, 1, 2, 3].map(() => store.openSession(TTL)));
      const revs: number[] = [];
      for (const [i, s] of sessions.entries()) {
        revs.push(
          await registerNode(store, keys, s, {
            id: `n${i}`,
            zone: `z${i % 2}`,
            address: `127.0.0.1:${7000 + i}`,
            incarnation: `i${i}`,
            state: i === 3 ? 'deactivating' : 'active',
          }),
        );
      }
      for (let g = 0; g < 12; g++) await addGroup(store, keys, `g${g}`, { replicas: 3, machine: 'kv' });
      const lead = await fleetElection(store, keys).campaign(sessions[0]!, 'n0');
      const v = await view(store, keys);
      const input = placementInputOf(v);
      expect(input.nodes.map((n) => n.id)).toEqual(['n0', 'n1', 'n2']); // the deactivating node gets nothing
      const placement = placeGroups(input);
      const entries = placement.groups.map((g) => ({ name: g.name, members: g.members, leader: g.leader! }));
      expect((await writeDesired(store, keys, lead.guard, v, entries)).outcome).toBe('written');
      const after = await view(store, keys);
      for (const g of placement.groups) expect(after.groups.get(g.name)!.desired?.members).toEqual(g.members);
      // Placing again from what was written changes nothing: the previous leaders are read back.
      expect(placeGroups(placementInputOf(after))).toEqual(placement);

      // A drained node leaves without ending its session; a stale registration revision deletes nothing.
      expect(await deregisterNode(store, keys, 'n3', revs[3]! + 1000)).toBe(false);
      expect(await deregisterNode(store, keys, 'n3', revs[3]!)).toBe(true);
      expect((await view(store, keys)).nodes.has('n3')).toBe(false);
    } finally {
      await store.close();
    }
  });
});
