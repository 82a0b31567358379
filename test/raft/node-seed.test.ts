/**
 * RaftNode.seedGroup (the fleet's unsafe recovery, docs/fleet.md, "A group that lost its majority"): a group created on one node from
 * another group's exported state, not from initial(); replicas that join it later get that state through the
 * leader's snapshot, never a replay of the log onto initial(); it survives a restart; a group with state is refused.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../src/errors.js';
import { startRaftNode, type RaftGroup, type RaftNode } from '../../src/raft/api.js';
import type { KvOutput } from '../../src/sim/linearizability-models.js';
import { kvStateMachine, type KvCommand, type KvQuery } from '../../src/sim/raft-kv.js';

type Kv = RaftGroup<KvCommand, KvQuery, KvOutput, string | null>;
const SECRET = 'a test secret of enough bytes';

async function until(cond: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 1000 && !cond(); i++) await new Promise((r) => setTimeout(r, 10));
  if (!cond()) throw new Error(`timed out waiting for ${what}`);
}

const nodes = new Set<RaftNode>();
const dirs: string[] = [];
afterEach(async () => {
  for (const n of nodes) await n.close();
  nodes.clear();
  for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
});

async function node(id: string, dataDir?: string): Promise<RaftNode> {
  const dir = dataDir ?? (await mkdtemp(join(tmpdir(), `raft-seed-${id}-`)));
  if (dataDir === undefined) dirs.push(dir);
  const n = await startRaftNode({ id, dataDir: dir, listen: '127.0.0.1:0', peers: {}, secret: SECRET, tickMs: 20 });
  nodes.add(n);
  return n;
}

describe('raft node: a group seeded from another state', () => {
  it('starts from the seeded state, hands it to a joining replica, and keeps it across a restart', async () => {
    const n1 = await node('n1');
    // The state to seed from: an old group's applied state, exported.
    const old: Kv = n1.openGroup('old', { members: ['n1'], stateMachine: kvStateMachine() });
    await old.ready({ timeoutMs: 10_000 });
    await old.command({ op: 'put', key: 'a', value: '1' });
    await old.command({ op: 'append', key: 'a', value: '2' });
    const state = old.exportState();

    await n1.seedGroup('new', { members: ['n1'], state });
    await expect(n1.seedGroup('new', { members: ['n1'], state })).rejects.toBeInstanceOf(InvalidArgumentError);
    const g1: Kv = n1.openGroup('new', { members: ['n1'], stateMachine: kvStateMachine() });
    await g1.ready({ timeoutMs: 10_000 });
    expect(await g1.query({ op: 'get', key: 'a' })).toBe('12');
    await g1.command({ op: 'append', key: 'a', value: '3' });
    expect(g1.status().snapshotIndex).toBe(1);
    expect(g1.status().sessions).toBe(1); // the new group's own session only: none carried over

    // A second node joins empty (the log from index 2 on is there: only the snapshot carries the seeded state).
    const n2 = await node('n2');
    n1.setPeer('n2', `127.0.0.1:${n2.port}`);
    n2.setPeer('n1', `127.0.0.1:${n1.port}`);
    const g2: Kv = n2.openGroup('new', { members: ['n1'], join: true, stateMachine: kvStateMachine() });
    await g1.changeMembership({ type: 'addLearner', node: 'n2' }, { timeoutMs: 10_000 });
    await until(() => g2.status().applied >= g1.status().applied, 'n2 to catch up');
    expect(await g2.query({ op: 'get', key: 'a' }, { consistency: 'stale' })).toBe('123');
    await g1.changeMembership({ type: 'addVoter', node: 'n2' }, { timeoutMs: 10_000 });
    await g2.command({ op: 'append', key: 'a', value: '4' }, { timeoutMs: 10_000 });
    expect(await g1.query({ op: 'get', key: 'a' })).toBe('1234');

    // n2 restarts: it recovers the seeded state from its own disk.
    const dir2 = dirs[dirs.length - 1]!;
    nodes.delete(n2);
    await n2.close();
    const again = await node('n2', dir2);
    again.setPeer('n1', `127.0.0.1:${n1.port}`);
    n1.setPeer('n2', `127.0.0.1:${again.port}`);
    const g2again: Kv = again.openGroup('new', { members: ['n1'], join: true, stateMachine: kvStateMachine() });
    await g2again.command({ op: 'append', key: 'a', value: '5' }, { timeoutMs: 10_000 });
    expect(await g2again.query({ op: 'get', key: 'a' })).toBe('12345');
  }, 60_000);
});
