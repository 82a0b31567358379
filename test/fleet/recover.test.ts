/**
 * A fleet group that lost its majority (issue 14 item 3), in-process nodes over loopback TCP and a SQLite control
 * store: it is reported (the surviving follower's `stuck` event, status `majority-lost`) and left alone (its
 * voters stay, nothing is force-removed, no data deleted); the explicit unsafe recovery from the survivor brings
 * it back with the survivor's state, re-replicated to new nodes; the dead nodes, restarted, drop their old
 * replicas, which never form a group again.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { createSqliteStore } from '../../src/backends/sqlite/index.js';
import { FleetGroupNotFoundError, FleetRecoveryRefusedError } from '../../src/errors.js';
import { groupRaftId, raftGroupId } from '../../src/protocol/fleet/keys.js';
import { recoverGroup } from '../../src/protocol/fleet/recover.js';
import { joinFleet, type FleetNode } from '../../src/runtime/fleet/node.js';
import type { Store } from '../../src/store/contract.js';
import { allocatePorts } from '../harness/ports.js';
import { releasePort } from '../harness/processes.js';
import { counter } from '../harness/counter.js';
import { eventually } from '../harness/wait.js';

const SECRET = 'a fleet test secret of enough bytes';

interface Env {
  dir: string;
  store: Store;
  ports: number[];
  nodes: Map<string, FleetNode>;
  /** Every `stuck` and `groupLost` event, as `node group detail|reason`. */
  events: string[];
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
  const dir = await mkdtemp(join(tmpdir(), 'fleet-recover-'));
  const store = await createSqliteStore({ path: join(dir, 'control.db'), namespace: 'fleet-test' });
  const e: Env = { dir, store, ports: await allocatePorts(6), nodes: new Map(), events: [] };
  envs.push(e);
  return e;
}

async function start(e: Env, id: string, extra: Record<string, unknown> = {}): Promise<FleetNode> {
  const i = Number(id.slice(1)) - 1;
  const node = await joinFleet({
    store: e.store,
    fleet: 'test',
    node: { id, zone: `z${i}`, address: `127.0.0.1:${e.ports[i]}` },
    dataDir: join(e.dir, id),
    secret: SECRET,
    machines: { counter },
    sessionTtlMs: 2000,
    gracePeriodMs: 1000,
    tickMs: 50,
    ...extra,
  });
  node.on('error', (err) => console.error(`${id}: ${err.context}: ${String(err.error)}`));
  node.on('stuck', (s) => e.events.push(`${id} stuck ${s.group} ${s.detail}`));
  node.on('groupLost', (l) => e.events.push(`${id} lost ${l.group} ${l.reason}`));
  e.nodes.set(id, node);
  return node;
}

/** Each node's replicas, as `node raftGroupId role voters`, for failure messages. */
function replicasOf(e: Env): string {
  const out: string[] = [];
  for (const [id, n] of e.nodes) {
    for (const r of n.replicas()) {
      const s = r.status;
      out.push(`${id} ${s.group} ${s.role} leader ${s.leader} voters ${s.membership.voters.join(',')}`);
    }
  }
  return out.join('\n');
}

describe('fleet: a group that lost its majority', () => {
  it('is reported and left alone; recovered from the survivor only by the explicit unsafe command', async () => {
    const e = await env();
    const n1 = await start(e, 'n1', { minNodes: 3 });
    await start(e, 'n2', { minNodes: 3 });
    await start(e, 'n3', { minNodes: 3 });
    await n1.addGroup('g', { replicas: 3, machine: 'counter' });
    await eventually(
      async () => {
        const g = (await n1.status()).groups[0]!;
        expect(g.health).toBe('converged');
        return true;
      },
      { what: 'g converged on three nodes', timeoutMs: 30_000, intervalMs: 100, context: () => replicasOf(e) },
    );
    for (let i = 0; i < 5; i++) await n1.command('g', { add: 1 });
    // Acknowledged by a majority: on the survivor too once it has applied them (it is the one recovered from).
    await eventually(
      () => [...e.nodes.values()].every((n) => n.replicas()[0]?.status.applied === n1.replicas()[0]?.status.applied),
      {
        what: 'every replica applied the commands',
        timeoutMs: 10_000,
      },
    );
    const before = (await n1.status()).groups[0]!;
    // A healthy group is not recovered.
    const refused = await n1.recoverGroup('g', { from: 'n1', unsafe: true }).catch((err: unknown) => err);
    expect(refused).toBeInstanceOf(FleetRecoveryRefusedError);
    expect((refused as FleetRecoveryRefusedError).reason).toBe('majority-not-lost');

    // The leader and one follower die: the survivor is a follower, with nobody left to lead.
    const survivorId = ['n1', 'n2', 'n3'].find((id) => id !== before.leader)!;
    const survivor = e.nodes.get(survivorId)!;
    const dead = ['n1', 'n2', 'n3'].filter((id) => id !== survivorId);
    for (const id of dead) {
      await e.nodes.get(id)!.close();
      e.nodes.delete(id);
    }
    await eventually(() => e.events.some((x) => x.startsWith(`${survivorId} stuck g `)), {
      what: 'the surviving follower reports the group stuck',
      timeoutMs: 15_000,
      context: () => e.events.join('\n'),
    });
    const lostStatus = await eventually(
      async () => {
        const g = (await survivor.status()).groups[0]!;
        expect(g.health).toBe('majority-lost');
        return g;
      },
      { what: 'status majority-lost', timeoutMs: 15_000, intervalMs: 100 },
    );
    expect([...lostStatus.voters].sort()).toEqual(['n1', 'n2', 'n3']);
    // A new node arrives: it may be placed, but the group has no leader to change anything; it stays as it is.
    const n4 = await start(e, 'n4');
    // The coordinator places the group on n4 once the dead nodes' grace period is over; it changes nothing else.
    await eventually(async () => (await survivor.status()).groups[0]!.desired.includes('n4'), {
      what: 'g placed on n4 (after the grace period of the dead nodes)',
      timeoutMs: 15_000,
      intervalMs: 100,
    });
    await eventually(() => n4.replicas().length === 1, { what: "n4's joining replica open", timeoutMs: 10_000 });
    const still = (await survivor.status()).groups[0]!;
    expect(still.health).toBe('majority-lost');
    expect(still.generation).toBe(before.generation);
    expect([...still.voters].sort()).toEqual(['n1', 'n2', 'n3']);
    const replica = survivor.replicas().find((r) => r.group === 'g')!;
    expect(replica.status.membership.voters.length).toBe(3);
    expect(e.events.filter((x) => x.startsWith(`${survivorId} stuck`))).toHaveLength(1); // once per episode
    expect(
      e.events.filter((x) => /^\S+ lost /.test(x)),
      e.events.join('\n'),
    ).toEqual([]); // no replica deleted

    // The refusals: without `unsafe`, from a node without a replica, for a group that does not exist.
    const noUnsafe = await recoverGroup(e.store, 'test', 'g', { from: survivorId } as never).catch((x: unknown) => x);
    expect((noUnsafe as FleetRecoveryRefusedError).reason).toBe('not-unsafe');
    const noReplica = await survivor.recoverGroup('g', { from: 'n4', unsafe: true }).catch((x: unknown) => x);
    expect((noReplica as FleetRecoveryRefusedError).reason).toBe('no-replica');
    await expect(survivor.recoverGroup('nope', { from: survivorId, unsafe: true })).rejects.toBeInstanceOf(
      FleetGroupNotFoundError,
    );
    expect((await survivor.status()).groups[0]!.generation).toBe(before.generation); // nothing written

    // The operator recovers it from the survivor (through the store alone, as the CLI does).
    const result = await recoverGroup(e.store, 'test', 'g', { from: survivorId, unsafe: true });
    expect(result.group.generation).toBeGreaterThan(before.generation);
    expect(result.group.seed).toEqual({
      node: survivorId,
      generation: before.generation,
      tag: expect.stringMatching(/^[A-Za-z0-9_-]{8}$/),
      initial: expect.any(Array),
    });
    // Another group than the old generation's: a new incarnation (keys.ts GroupRecord.incarnation).
    expect(result.group.incarnation).toMatch(/^[A-Za-z0-9_-]{8,64}$/);
    expect([...result.lostVoters].sort()).toEqual(dead);
    expect(result.warning).toMatch(/UNSAFE/);
    const n5 = await start(e, 'n5');
    // It serves again with the survivor's state, and is re-replicated to the new nodes.
    await eventually(async () => (await survivor.query('g', 'total', { timeoutMs: 2000 })) === 5, {
      what: 'the recovered group answers with the survivor state',
      timeoutMs: 30_000,
      intervalMs: 200,
      context: () => replicasOf(e),
    });
    expect(await n4.command('g', { add: 10 })).toBe(15);
    await eventually(
      async () => {
        const g = (await survivor.status()).groups[0]!;
        expect(g.generation).toBe(result.group.generation);
        expect(g.health).toBe('converged');
        expect([...g.voters].sort()).toEqual([survivorId, 'n4', 'n5'].sort());
        return true;
      },
      { what: 'the recovered group on three nodes', timeoutMs: 30_000, intervalMs: 100, context: () => replicasOf(e) },
    );
    for (const n of [survivor, n4, n5]) expect(await n.query('g', 'total')).toBe(15);
    // The survivor's old replica is gone (replaced by the new generation's).
    expect(survivor.replicas().map((r) => r.status.group)).toEqual([groupRaftId(result.group)]);
    expect(e.events).toContain(`${survivorId} lost g group-removed`);

    // The dead nodes come back with their old replicas: dropped, never a group again.
    const oldId = raftGroupId('g', result.group.seed!.generation, result.group.seed!.tag);
    for (const id of dead) await start(e, id);
    await eventually(() => dead.every((id) => e.events.includes(`${id} lost g group-removed`)), {
      what: 'the old replicas dropped on the returning nodes',
      timeoutMs: 20_000,
      context: () => e.events.join('\n'),
    });
    for (const id of dead) {
      expect(
        e.nodes
          .get(id)!
          .replicas()
          .map((r) => r.status.group),
      ).not.toContain(oldId);
    }
    expect(await e.nodes.get(dead[0]!)!.command('g', { add: 1 })).toBe(16);
    const final = (await survivor.status()).groups[0]!;
    expect(final.generation).toBe(result.group.generation);
  }, 120_000);
});
