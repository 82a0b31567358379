/**
 * A learner is promoted only once it can vote (src/runtime/fleet/node.ts, #votingProgress): a joining replica holds
 * its votes until it caught up with a leader and two election timeouts passed (src/raft/core.ts, 'leader-seen').
 * Promoted earlier, it is a voter that cannot vote, and losing one more voter then leaves the group without a
 * majority for good (found by bench/fleet.ts with 1000 groups and a kill -9 after moves).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { createSqliteStore } from '../../src/backends/sqlite/index.js';
import { joinFleet, type FleetNode } from '../../src/runtime/fleet/node.js';
import { kvStateMachine } from '../../src/sim/raft-kv.js';
import type { Store } from '../../src/store/contract.js';
import { allocatePorts } from '../harness/ports.js';
import { releasePort } from '../harness/processes.js';
import { eventually } from '../harness/wait.js';

const SECRET = 'a fleet test secret of enough bytes';
let cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanup.reverse()) await c();
  cleanup = [];
});

describe('fleet: promoting a learner', () => {
  it('promotes a joining replica only once its votes are no longer held', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'fleet-promote-'));
    const store: Store = await createSqliteStore({ path: join(dir, 'control.db'), namespace: 'fleet-test' });
    const ports = await allocatePorts(4);
    const nodes = new Map<string, FleetNode>();
    cleanup.push(async () => {
      for (const n of nodes.values()) await n.close().catch(() => undefined);
      await store.close();
      await rm(dir, { recursive: true, force: true });
      for (const p of ports) releasePort(p);
    });
    const start = async (i: number, zone: string): Promise<FleetNode> => {
      const id = `n${i + 1}`;
      const node = await joinFleet({
        store,
        fleet: 'test',
        node: { id, zone, address: `127.0.0.1:${ports[i]}` },
        dataDir: join(dir, id),
        secret: SECRET,
        machines: { kv: kvStateMachine() },
        sessionTtlMs: 2000,
        gracePeriodMs: 1000,
        tickMs: 50,
        minNodes: 3,
      });
      node.on('error', () => undefined);
      nodes.set(id, node);
      return node;
    };
    const n1 = await start(0, 'z1');
    await start(1, 'z2');
    await start(2, 'z3');
    const names = ['g1', 'g2', 'g3', 'g4', 'g5', 'g6'];
    for (const g of names) await n1.addGroup(g, { replicas: 3, machine: 'kv' });
    await eventually(async () => (await n1.status()).counts.converged === names.length, {
      what: 'six groups converged',
      timeoutMs: 30_000,
    });
    // n4 joins zone z1: groups move onto it (learner, caught up, promoted). At each promotion's commit, n4's
    // replica must already be able to vote.
    const n4 = await start(3, 'z1');
    const heldAtPromotion: (string | undefined)[] = [];
    for (const n of nodes.values()) {
      n.on('moved', (e) => {
        if (e.change.type !== 'addVoter' || e.change.node !== 'n4') return;
        heldAtPromotion.push(n4.replicas().find((r) => r.group === e.group)?.status.votesHeld);
      });
    }
    await eventually(
      async () => {
        const s = await n1.status();
        return s.counts.converged === names.length && s.groups.some((g) => g.voters.includes('n4'));
      },
      { what: 'groups moved onto n4 and converged', timeoutMs: 30_000 },
    );
    expect(heldAtPromotion.length).toBeGreaterThan(0);
    expect(heldAtPromotion.filter((h) => h === 'leader-seen')).toEqual([]);
  });
});
