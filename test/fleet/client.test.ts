/**
 * A fleet client (connectFleet) in a process that is no fleet node: it adds and removes groups through the store,
 * and runs commands and queries on the nodes over client-mode transport connections — exactly once, whichever node
 * answers — and says so when its secret is not the fleet's.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { createSqliteStore } from '../../src/backends/sqlite/index.js';
import {
  FleetGroupExistsError,
  FleetGroupNotFoundError,
  InvalidArgumentError,
  PeerAuthError,
} from '../../src/errors.js';
import { connectFleet, type FleetClient } from '../../src/runtime/fleet/client.js';
import { joinFleet, type FleetNode } from '../../src/runtime/fleet/node.js';
import type { Store } from '../../src/store/contract.js';
import { allocatePorts } from '../harness/ports.js';
import { releasePort } from '../harness/processes.js';
import { counter } from '../harness/counter.js';
import { eventually } from '../harness/wait.js';

const SECRET = 'a fleet client test secret';

let cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanup.reverse()) await c().catch(() => undefined);
  cleanup = [];
});

async function fleet(count: number): Promise<{ store: Store; nodes: FleetNode[] }> {
  const dir = await mkdtemp(join(tmpdir(), 'fleet-client-'));
  const store = await createSqliteStore({ path: join(dir, 'control.db'), namespace: 'fleet-client' });
  const ports = await allocatePorts(count);
  cleanup.push(async () => {
    await store.close();
    await rm(dir, { recursive: true, force: true });
    for (const p of ports) releasePort(p);
  });
  const nodes: FleetNode[] = [];
  for (let i = 0; i < count; i++) {
    const node = await joinFleet({
      store,
      fleet: 'shop',
      node: { id: `n${i + 1}`, zone: `z${i + 1}`, address: `127.0.0.1:${ports[i]}` },
      dataDir: join(dir, `n${i + 1}`),
      secret: SECRET,
      machines: { counter },
      sessionTtlMs: 2000,
      gracePeriodMs: 1000,
      tickMs: 50,
      minNodes: count,
    });
    nodes.push(node);
    cleanup.push(() => node.close());
  }
  return { store, nodes };
}

async function connect(store: Store, secret = SECRET): Promise<FleetClient> {
  const client = await connectFleet({ store, fleet: 'shop', secret, requestTimeoutMs: 10_000 });
  const errors: unknown[] = [];
  client.on('error', (e) => errors.push(e.error));
  cleanup.push(() => client.close());
  return client;
}

describe('fleet client (connectFleet)', () => {
  it('adds groups, runs commands exactly once and queries from outside the fleet, and removes groups', async () => {
    const { store, nodes } = await fleet(3);
    const client = await connect(store);
    for (const g of ['a', 'b']) await client.addGroup(g, { replicas: 3, machine: 'counter' });
    await expect(client.addGroup('a', { replicas: 3, machine: 'counter' })).rejects.toBeInstanceOf(
      FleetGroupExistsError,
    );
    // A machine no live node runs: refused (a typo, most likely), unless asked for; nothing written.
    await expect(client.addGroup('typo', { replicas: 3, machine: 'countr' })).rejects.toThrow(
      /no live node of fleet shop runs state machine "countr" \(the live nodes run: counter\)/,
    );
    expect((await client.groups()).map((g) => g.name)).toEqual(['a', 'b']);
    await client.addGroup('typo', { replicas: 3, machine: 'countr', machineCheck: false });
    await client.removeGroup('typo');
    // Misspelt options are refused, not ignored.
    await expect(client.addGroup('x', { replica: 3, machine: 'counter' } as never)).rejects.toThrow(
      /unknown option "replica" \(did you mean "replicas"\?\)/,
    );
    await expect(client.command('a', { add: 1 }, { timeoutMS: 5 } as never)).rejects.toThrow(
      /unknown option "timeoutMS" \(did you mean "timeoutMs"\?\)/,
    );
    await expect(nodes[0]!.query('a', 'total', { consistancy: 'stale' } as never)).rejects.toThrow(
      /did you mean "consistency"/,
    );
    // The first command waits for the group to be placed and get a leader.
    expect(await client.command('a', { add: 2 }, { timeoutMs: 30_000 })).toBe(2);
    expect(await client.command('a', { add: 3 })).toBe(5);
    expect(await client.command('b', { add: 7 }, { timeoutMs: 30_000 })).toBe(7);
    expect(await client.query('a', 'total')).toBe(5);
    expect(await client.query('b', 'total', { consistency: 'stale' })).toBeLessThanOrEqual(7);
    // What the nodes see is what the client did: each command applied once.
    expect(await nodes[0]!.query('a', 'total')).toBe(5);
    expect(await nodes[2]!.query('b', 'total')).toBe(7);

    const groups = await client.groups();
    expect(groups.map((g) => [g.name, g.machine, g.replicas])).toEqual([
      ['a', 'counter', 3],
      ['b', 'counter', 3],
    ]);
    const status = await client.status();
    expect(status.fleet).toBe('shop');
    expect(status.nodes.map((n) => n.id)).toEqual(['n1', 'n2', 'n3']);

    await client.removeGroup('b');
    await expect(client.command('b', { add: 1 })).rejects.toBeInstanceOf(FleetGroupNotFoundError);
    await expect(client.removeGroup('b')).rejects.toBeInstanceOf(FleetGroupNotFoundError);
    await expect(client.command('bad name', 1)).rejects.toBeInstanceOf(InvalidArgumentError);
    await eventually(() => nodes.every((n) => n.replicas().every((r) => r.group !== 'b')), {
      what: "b's replicas dropped",
      timeoutMs: 10_000,
    });
  }, 90_000);

  it("says when the nodes refuse the client's secret", async () => {
    const { store } = await fleet(1);
    const good = await connect(store);
    await good.addGroup('c', { replicas: 1, machine: 'counter' });
    expect(await good.command('c', { add: 1 }, { timeoutMs: 30_000 })).toBe(1);
    const bad = await connect(store, 'not the fleet secret at all');
    await expect(bad.command('c', { add: 1 }, { timeoutMs: 2000 })).rejects.toBeInstanceOf(PeerAuthError);
    expect(await good.query('c', 'total')).toBe(1);
  }, 60_000);
});
