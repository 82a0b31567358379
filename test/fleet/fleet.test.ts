/**
 * Fleet nodes in this process: real Raft nodes over loopback TCP, each with its own data directory, and one SQLite
 * control store. Groups are created where the coordinator places them, converge to their desired members and
 * leaders through Raft (learner → caught up → voter → extra member removed), keep every acknowledged command through
 * a node joining, draining and dying, and answer from any node.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { createSqliteStore } from '../../src/backends/sqlite/index.js';
import {
  FleetControlLostError,
  FleetGroupExistsError,
  FleetGroupNotFoundError,
  InvalidArgumentError,
  NodeIdInUseError,
} from '../../src/errors.js';
import { encodeRecord } from '../../src/protocol/fleet/keys.js';
import { joinFleet, type FleetNode } from '../../src/runtime/fleet/node.js';
import type { StateMachine } from '../../src/raft/node/state-machine.js';
import type { Store } from '../../src/store/contract.js';
import { allocatePorts } from '../harness/ports.js';
import { releasePort } from '../harness/processes.js';
import { counter, type Counter } from '../harness/counter.js';
import { eventually } from '../harness/wait.js';

/** A second state machine: total × 2 + add, starting from 1. */
const doubler: StateMachine<Counter, { add: number }, 'total', number, number> = {
  ...counter,
  initial: () => ({ total: 1 }),
  command: (state, c) => ({ state: { total: state.total * 2 + c.add }, result: state.total * 2 + c.add }),
};

const SECRET = 'a fleet test secret of enough bytes';

interface Env {
  dir: string;
  store: Store;
  ports: number[];
  nodes: Map<string, FleetNode>;
}
let envs: Env[] = [];
afterEach(async () => {
  for (const e of envs) {
    for (const n of e.nodes.values()) await n.close().catch(() => undefined);
    await e.store.close();
    await rm(e.dir, { recursive: true, force: true });
    for (const p of e.ports) releasePort(p);
  }
  envs = [];
});

async function env(): Promise<Env> {
  const dir = await mkdtemp(join(tmpdir(), 'fleet-'));
  const store = await createSqliteStore({ path: join(dir, 'control.db'), namespace: 'fleet-test' });
  const e: Env = { dir, store, ports: await allocatePorts(8), nodes: new Map() };
  envs.push(e);
  return e;
}

async function start(e: Env, id: string, zone: string, extra: Record<string, unknown> = {}): Promise<FleetNode> {
  const i = Number(id.slice(1)) - 1;
  const node = await joinFleet({
    store: e.store,
    fleet: 'test',
    node: { id, zone, address: `127.0.0.1:${e.ports[i]}` },
    dataDir: join(e.dir, id),
    secret: SECRET,
    machines: { counter },
    sessionTtlMs: 2000,
    gracePeriodMs: 1000,
    tickMs: 50,
    ...extra,
  });
  node.on('error', (err) => console.error(`${id}: ${err.context}: ${String(err.error)}`));
  e.nodes.set(id, node);
  return node;
}

/** Every group has its desired members as voters, no learners, its desired leader leading (as reported). */
async function converged(n: FleetNode, what: string, timeoutMs = 30_000): Promise<void> {
  try {
    await convergedOnce(n, what, timeoutMs);
  } catch (err) {
    // What each replica says, for whoever reads the failure.
    for (const e of envs) {
      for (const [id, node] of e.nodes) {
        for (const r of node.replicas()) {
          const s = r.status;
          console.error(
            `${id} ${r.group}: ${s.role} term ${s.term} leader ${s.leader} voters ${s.membership.voters.join(',')} ` +
              `learners ${s.membership.learners.join(',')} commit ${s.committed} last ${s.lastIndex} ` +
              `held ${String(s.votesHeld)} progress ${JSON.stringify([...s.progress])}`,
          );
        }
      }
    }
    throw err;
  }
}

async function convergedOnce(n: FleetNode, what: string, timeoutMs: number): Promise<void> {
  await eventually(
    async () => {
      const gs = await n.groups();
      for (const g of gs) {
        expect(g.desired, `${g.name} placed`).toBeDefined();
        const o = g.observed;
        expect(o?.status, `${g.name}: ${o?.detail}`).toBe('converged');
        expect([...o!.voters].sort()).toEqual([...g.desired!.members].sort());
        expect(o!.leader).toBe(g.desired!.leader);
      }
      return true;
    },
    { what, timeoutMs, intervalMs: 100 },
  );
}

describe('fleet (in-process nodes, SQLite control store)', () => {
  it('places groups over zones, moves them as nodes join and drain, and loses no acknowledged command', async () => {
    const e = await env();
    const n1 = await start(e, 'n1', 'z1', { minNodes: 3 });
    await start(e, 'n2', 'z2', { minNodes: 3 });
    await start(e, 'n3', 'z3', { minNodes: 3 });
    const names = ['g1', 'g2', 'g3', 'g4', 'g5', 'g6'];
    for (const g of names) await n1.addGroup(g, { replicas: 3, machine: 'counter' });
    await converged(n1, 'six groups on three nodes');

    let acked = new Map(names.map((g) => [g, 0]));
    const addAll = async (via: FleetNode): Promise<void> => {
      for (const g of names) {
        await via.command(g, { add: 1 });
        acked.set(g, acked.get(g)! + 1);
      }
    };
    for (const n of e.nodes.values()) await addAll(n);

    // A fourth node in zone z1: members move to it (one change at a time), and nothing acknowledged is lost.
    const n4 = await start(e, 'n4', 'z1');
    await eventually(async () => (await n1.groups()).some((g) => g.desired!.members.includes('n4')), {
      what: 'groups placed on n4',
      timeoutMs: 10_000,
    });
    await converged(n1, 'after n4 joined');
    const gained = n4.replicas().length;
    expect(gained).toBeGreaterThan(0);
    await addAll(n4);
    // Draining n4: its replicas move away, then it leaves.
    await n4.deactivate({ timeoutMs: 30_000 });
    e.nodes.delete('n4');
    await converged(n1, 'after n4 drained');
    for (const g of names) {
      expect(await n1.query(g, 'total', { consistency: 'linearizable' }).catch(() => undefined)).toSatisfy(
        (v: unknown) => v === undefined || v === acked.get(g),
      );
    }
    for (const n of e.nodes.values()) await addAll(n);
    for (const [id, n] of e.nodes) {
      for (const g of names) {
        expect(await n.query(g, 'total'), `${g} via ${id}`).toBe(acked.get(g));
      }
    }
    acked = new Map(acked);
  });

  it('a draining node goes on serving commands as its replicas are dropped: rerouted, each applied at most once', async () => {
    const e = await env();
    const n1 = await start(e, 'n1', 'z1', { minNodes: 3 });
    await start(e, 'n2', 'z2', { minNodes: 3 });
    await start(e, 'n3', 'z3', { minNodes: 3 });
    const n4 = await start(e, 'n4', 'z1', { minNodes: 3 });
    const names = ['d1', 'd2', 'd3', 'd4', 'd5', 'd6', 'd7', 'd8'];
    for (const g of names) await n1.addGroup(g, { replicas: 3, machine: 'counter' });
    await converged(n1, 'eight groups on four nodes');
    const held = n4.replicas().map((r) => r.group.split(':')[0]!);
    expect(held.length).toBeGreaterThan(0);
    // Through n4, commands to the groups it holds, several in flight per group, until it has dropped them all:
    // some are in flight on its replica when the replica is dropped. They must go on elsewhere (the same command
    // id), not fail because the replica closed.
    const acked = new Map(names.map((g) => [g, 0]));
    const unknown = new Map(names.map((g) => [g, 0]));
    const failures: string[] = [];
    let stop = false;
    const worker = async (g: string): Promise<void> => {
      while (!stop) {
        try {
          await n4.command(g, { add: 1 }, { timeoutMs: 10_000 });
          acked.set(g, acked.get(g)! + 1);
        } catch (err) {
          unknown.set(g, unknown.get(g)! + 1);
          if (!stop && failures.length < 20) failures.push(`${g}: ${String(err)}`);
          await new Promise((r) => setTimeout(r, 20));
        }
      }
    };
    // Stop once n4 holds nothing (it then leaves: calls failing because n4 itself closed are not the point).
    n4.on('groupLost', () => {
      if (n4.replicas().length === 0) stop = true;
    });
    const workers = held.flatMap((g) => [worker(g), worker(g), worker(g)]);
    await n4.deactivate({ timeoutMs: 30_000 });
    stop = true;
    await Promise.all(workers);
    e.nodes.delete('n4');
    expect(failures).toEqual([]);
    for (const g of held) {
      const total = await n1.query<number>(g, 'total');
      expect(total, g).toBeGreaterThanOrEqual(acked.get(g)!);
      expect(total, g).toBeLessThanOrEqual(acked.get(g)! + unknown.get(g)!);
      expect(acked.get(g), g).toBeGreaterThan(0);
    }
  });

  it('re-replicates the groups of a node that died after the grace period', async () => {
    const e = await env();
    const nodes = [await start(e, 'n1', 'z1'), await start(e, 'n2', 'z2'), await start(e, 'n3', 'z1')];
    await start(e, 'n4', 'z2');
    for (const g of ['a', 'b', 'c', 'd']) await nodes[0]!.addGroup(g, { replicas: 3, machine: 'counter' });
    await converged(nodes[0]!, 'four groups on four nodes');
    for (const g of ['a', 'b', 'c', 'd']) await nodes[0]!.command(g, { add: 5 });
    // n4 dies without draining: its session ends, and after the grace period its members are placed elsewhere.
    await e.nodes.get('n4')!.close();
    e.nodes.delete('n4');
    await eventually(async () => (await nodes[0]!.groups()).every((g) => !g.desired!.members.includes('n4')), {
      what: 'n4 replaced in every desired record (after the session TTL and the grace period)',
      timeoutMs: 15_000,
    });
    await converged(nodes[0]!, 'after n4 died');
    for (const g of ['a', 'b', 'c', 'd']) expect(await nodes[0]!.query(g, 'total')).toBe(5);
  });

  it('refuses bad input with typed errors', async () => {
    const e = await env();
    const n1 = await start(e, 'n1', 'z1');
    await n1.addGroup('x', { replicas: 1, machine: 'counter' });
    await expect(n1.addGroup('x', { replicas: 1, machine: 'counter' })).rejects.toBeInstanceOf(FleetGroupExistsError);
    await expect(n1.addGroup('y', { replicas: 1, machine: 'nope' })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(n1.addGroup('bad name', { replicas: 1, machine: 'counter' })).rejects.toBeInstanceOf(
      InvalidArgumentError,
    );
    await expect(n1.command('missing', { add: 1 })).rejects.toBeInstanceOf(FleetGroupNotFoundError);
    await expect(n1.removeGroup('missing')).rejects.toBeInstanceOf(FleetGroupNotFoundError);
    await expect(
      joinFleet({
        store: e.store,
        fleet: 'test',
        node: { id: 'n2', address: `127.0.0.1:${e.ports[1]}` },
        dataDir: join(e.dir, 'n1'),
        secret: SECRET,
        machines: { counter },
      }),
    ).rejects.toThrow(/data directory|in use|LOCK/i);
    await expect(
      joinFleet({
        store: e.store,
        fleet: 'test',
        node: { id: 'n5', address: `127.0.0.1:${e.ports[4]}` },
        dataDir: join(e.dir, 'n5'),
        secret: SECRET,
        machines: { counter },
        gracePeriodMS: 10,
      } as never),
    ).rejects.toThrow(/gracePeriodMs/);
    // A removed group's replicas go; its name can be used again, as a new group.
    expect(await n1.command('x', { add: 2 })).toBe(2);
    await n1.removeGroup('x');
    await eventually(() => n1.replicas().length === 0, { what: 'x dropped', timeoutMs: 10_000 });
    await n1.addGroup('x', { replicas: 1, machine: 'counter' });
    await eventually(async () => (await n1.command('x', { add: 1 })) === 1, {
      what: 'the new x starts from zero',
      timeoutMs: 10_000,
    });
  });

  it('refuses a node id live in another process and a data directory of another fleet', async () => {
    const e = await env();
    const n1 = await start(e, 'n1', 'z1');
    // The same id from a second process (here: a second node object with its own directory): refused, typed.
    await expect(
      joinFleet({
        store: e.store,
        fleet: 'test',
        node: { id: 'n1', address: `127.0.0.1:${e.ports[5]}` },
        dataDir: join(e.dir, 'n1-again'),
        secret: SECRET,
        machines: { counter },
        sessionTtlMs: 2000,
        joinTimeoutMs: 500,
      }),
    ).rejects.toBeInstanceOf(NodeIdInUseError);
    // n1's data directory belongs to fleet 'test': another fleet may not use it (even once n1 is gone).
    await n1.close();
    e.nodes.delete('n1');
    await expect(
      joinFleet({
        store: e.store,
        fleet: 'other',
        node: { id: 'n1', address: `127.0.0.1:${e.ports[0]}` },
        dataDir: join(e.dir, 'n1'),
        secret: SECRET,
        machines: { counter },
      }),
    ).rejects.toThrow(/belongs to node "n1" of fleet "test"/);
  });

  it('nodes with different machines: each group only where its machine runs; addGroup of a machine another node runs', async () => {
    const e = await env();
    const errors: string[] = [];
    const n1 = await start(e, 'n1', 'z1', { machines: { counter } });
    const n2 = await start(e, 'n2', 'z2', { machines: { counter, doubler } });
    const n3 = await start(e, 'n3', 'z3', { machines: { doubler } });
    for (const n of [n1, n2, n3]) n.on('error', (err) => errors.push(String(err.error)));
    // n1 does not run doubler, n2 and n3 do: accepted. A machine no live node runs: refused, by name.
    await n1.addGroup('d', { replicas: 3, machine: 'doubler' });
    await n3.addGroup('c', { replicas: 3, machine: 'counter' });
    const refused = await n1.addGroup('x', { replicas: 3, machine: 'countr' }).catch((err: unknown) => err);
    expect(refused).toBeInstanceOf(InvalidArgumentError);
    expect(String(refused)).toMatch(
      /no live node .* runs state machine "countr" \(the live nodes run: counter, doubler\)/,
    );
    await converged(n1, 'each group on the nodes that run its machine');
    const desired = new Map((await n1.groups()).map((g) => [g.name, [...g.desired!.members].sort()]));
    expect(desired).toEqual(
      new Map([
        ['c', ['n1', 'n2']],
        ['d', ['n2', 'n3']],
      ]),
    );
    expect(n1.replicas().map((r) => r.group)).toEqual(['c']);
    expect(n3.replicas().map((r) => r.group)).toEqual(['d']);
    // Any node reaches any group: those that do not run its machine route to one that does.
    expect(await n3.command('c', { add: 3 })).toBe(3);
    expect(await n1.command('d', { add: 2 })).toBe(4); // doubler: total × 2 + add, from 1
    expect(await n2.query('d', 'total')).toBe(4);
    // The node records say what each runs; nobody was placed a group it cannot run.
    expect((await n1.status()).groups.map((g) => g.health)).toEqual(['converged', 'converged']);
    expect(errors.filter((m) => m.includes('not in this node'))).toEqual([]);
  });
  it('keeps every replica when the control store loses its records: groups written back whole, a name added again never confused with its orphan', async () => {
    const e = await env();
    const nodes = [await start(e, 'n1', 'z1'), await start(e, 'n2', 'z2'), await start(e, 'n3', 'z3')];
    const lost: FleetControlLostError[] = [];
    const refused: string[] = [];
    const dropped: string[] = [];
    for (const n of nodes) {
      n.on('error', ({ error }) => {
        if (error instanceof FleetControlLostError) lost.push(error);
        else if (String(error).includes('cannot be written back')) refused.push(`${n.nodeId} ${String(error)}`);
      });
      n.on('groupLost', ({ group }) => dropped.push(`${n.nodeId} ${group}`));
    }
    for (const g of ['a', 'b']) await nodes[0]!.addGroup(g, { replicas: 3, machine: 'counter' });
    await converged(nodes[0]!, 'two groups on three nodes');
    expect(await nodes[0]!.command('a', { add: 5 })).toBe(5);
    expect(await nodes[1]!.command('b', { add: 7 })).toBe(7);
    const aId = nodes[0]!.replicas().find((r) => r.group === 'a')!.id;
    const bId = nodes[0]!.replicas().find((r) => r.group === 'b')!.id;
    expect(aId).toMatch(/^a:1\.[A-Za-z0-9_-]{8}$/);

    // The records vanish at once (a store restarted without its data, or an operator's delete) and, before any node
    // notices, someone adds "a" again: the new records' counter starts from scratch, so the new "a" gets generation
    // 1, the old "a"'s — but another tag, so another Raft group id. In one transaction, so that no node sees the
    // moment between.
    const keys = nodes[0]!.keys;
    const doomed = [keys.meta];
    for (const prefix of [keys.groups, keys.desired, keys.observed]) {
      for (const kv of (await e.store.range(prefix)).kvs) doomed.push(kv.key);
    }
    await e.store.txn({
      compare: [],
      then: [
        ...doomed
          .filter((k) => k !== keys.meta && k !== keys.group('a'))
          .map((key) => ({ op: 'delete' as const, key })),
        {
          op: 'put',
          key: keys.meta,
          value: encodeRecord({ lastGeneration: 1, groups: 1, id: 'a-new-control-id', issued: [[1, 1]] }),
        },
        {
          op: 'put',
          key: keys.group('a'),
          value: encodeRecord({ name: 'a', replicas: 3, machine: 'counter', generation: 1, tag: 'newTag01' }),
        },
      ],
    });
    await eventually(() => new Set(lost.map((l) => l.message.match(/node (n\d)/)![1])).size === 3, {
      what: 'every node to report the lost records',
      timeoutMs: 15_000,
    });
    expect(lost[0]!.code).toBe('DATA_LOST');
    expect(lost[0]!.orphans).toEqual([aId, bId]);

    // "b" comes back whole, under its own generation, written back by its leader; the counter now passes it.
    await eventually(async () => (await nodes[2]!.query('b', 'total', { timeoutMs: 2000 })) === 7, {
      what: 'b written back with its state',
      timeoutMs: 15_000,
    });
    expect(await nodes[2]!.command('b', { add: 1 })).toBe(8);
    await eventually(() => nodes.every((n) => n.orphans().join() === aId), {
      what: 'b no orphan',
      timeoutMs: 10_000,
    });
    // The old "a" cannot come back (its generation was handed out again). The new "a" is another Raft group, opened
    // beside it: it answers with its own state, never the old group's. The old state stays on every node.
    // One command (retried inside with the same id until it is placed and elected: exactly once).
    expect(await nodes[2]!.command('a', { add: 1 }, { timeoutMs: 15_000 })).toBe(1);
    for (const n of nodes) {
      const a = n.replicas().find((r) => r.id === aId)!;
      expect(a.orphan).toBe(true);
      expect(a.status.applied).toBeGreaterThanOrEqual(2);
      const identity = JSON.parse(await readFile(join(e.dir, n.nodeId, 'fleet.json'), 'utf8')) as {
        orphans: Record<string, string>;
      };
      expect(Object.keys(identity.orphans)).toEqual([aId]);
    }
    await eventually(() => refused.length > 0, { what: 'the refused write-back reported', timeoutMs: 10_000 });
    expect(refused[0]).toContain(`orphan ${aId} cannot be written back: its generation was handed out again`);
    // A new group gets a generation past both.
    expect((await nodes[0]!.addGroup('c', { replicas: 3, machine: 'counter' })).generation).toBe(3);
    // Orphans are remembered across a restart.
    await nodes[1]!.close();
    e.nodes.delete('n2');
    const again = await start(e, 'n2', 'z2');
    await eventually(async () => (await again.command('c', { add: 2 }, { timeoutMs: 2000 })) === 2, {
      what: 'n2 back, c placed',
      timeoutMs: 15_000,
    });
    expect(again.orphans()).toEqual([aId]);
    expect(await again.query('b', 'total')).toBe(8);
    expect(await again.query('a', 'total')).toBe(1);
    expect(dropped).toEqual([]);
  });
});
