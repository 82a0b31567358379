/**
 * What the fleet needs of a Raft node (issue 14), on loopback TCP with real data directories: peers added, moved
 * and removed while nodes run, a replica joining a group empty and brought in by the leader (through a snapshot
 * after compaction), and groups closed or dropped for good.
 */
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { ClosedError, InvalidArgumentError, PeerAuthError } from '../../src/errors.js';
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

async function newDir(id: string): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), `raft-dyn-${id}-`));
  dirs.push(d);
  return d;
}

/** A node on any free port, knowing no peer yet (the fleet learns them from its control store). */
async function node(id: string, dataDir: string, peers: Record<string, string> = {}): Promise<RaftNode> {
  const n = await startRaftNode({
    id,
    dataDir,
    listen: '127.0.0.1:0',
    peers,
    secret: SECRET,
    tickMs: 20,
    electionTicks: 10,
  });
  nodes.add(n);
  return n;
}

const addr = (n: RaftNode): string => `127.0.0.1:${n.port}`;

async function stop(n: RaftNode): Promise<void> {
  nodes.delete(n);
  await n.close();
}

describe('raft node: dynamic peers', () => {
  for (const first of ['dialer', 'acceptor'] as const) {
    it(`two nodes started with no peers connect once each knows the other (the ${first} learns first)`, async () => {
      const n1 = await node('n1', await newDir('n1')); // the lower id dials
      const n2 = await node('n2', await newDir('n2'));
      expect(n1.incarnation).toMatch(/^[0-9a-f]{32}$/);
      expect(n2.incarnation).not.toBe(n1.incarnation);
      if (first === 'dialer') {
        // n1 dials n2, which does not know it yet and refuses it in the handshake; n1 redials by its backoff.
        const refused = new Promise<void>((resolve) =>
          n2.on('error', ({ error }) => {
            if (error instanceof PeerAuthError) resolve();
          }),
        );
        n1.setPeer('n2', addr(n2));
        await refused;
        n2.setPeer('n1', addr(n1));
      } else {
        n2.setPeer('n1', addr(n1)); // n2 does not dial: it waits for n1
        n1.setPeer('n2', addr(n2));
      }
      expect(n1.peers()).toEqual({ n2: addr(n2) });
      const groups = [n1, n2].map((n): Kv =>
        n.openGroup('kv', { members: ['n1', 'n2'], stateMachine: kvStateMachine() }),
      );
      await groups[0]!.ready({ timeoutMs: 15_000 });
      await groups[1]!.command({ op: 'put', key: 'a', value: '1' }, { timeoutMs: 15_000 });
      expect(await groups[0]!.query({ op: 'get', key: 'a' })).toBe('1');
    }, 30_000);
  }

  it('a peer moved to another address is reached there; a removed peer is cut off while the others go on', async () => {
    const ids = ['n1', 'n2', 'n3'];
    const ds = await Promise.all(ids.map(newDir));
    const ns = await Promise.all(ids.map((id, i) => node(id, ds[i]!)));
    for (const a of ns) for (const b of ns) if (a !== b) a.setPeer(b.id, addr(b));
    const gs = ns.map((n): Kv => n.openGroup('kv', { members: ids, stateMachine: kvStateMachine() }));
    await Promise.all(gs.map((g) => g.ready({ timeoutMs: 15_000 })));
    await gs[0]!.command({ op: 'put', key: 'k', value: '1' });
    const incarnation = ns[1]!.incarnation;
    // n2 restarts on another port; the others are told its new address.
    await stop(ns[1]!);
    const n2 = await node('n2', ds[1]!, { n1: addr(ns[0]!), n3: addr(ns[2]!) });
    expect(n2.incarnation).toBe(incarnation); // the same data directory
    ns[1] = n2;
    ns[0]!.setPeer('n2', addr(n2));
    ns[2]!.setPeer('n2', addr(n2));
    gs[1] = n2.openGroup('kv', { members: ids, stateMachine: kvStateMachine() });
    await gs[1].command({ op: 'put', key: 'k', value: '2' }, { timeoutMs: 15_000 });
    expect(await gs[1].query({ op: 'get', key: 'k' })).toBe('2');
    // n3 leaves the group, then the others forget it and it forgets them.
    await gs[0]!.changeMembership({ type: 'remove', node: 'n3' }, { timeoutMs: 15_000 });
    ns[0]!.removePeer('n3');
    ns[1]!.removePeer('n3');
    ns[2]!.removePeer('n1');
    ns[2]!.removePeer('n2');
    expect(ns[0]!.peers()).toEqual({ n2: addr(n2) });
    // n3 may or may not learn that its removal committed; it applies nothing after it.
    const removedAt = gs[0]!.status().membershipIndex;
    for (let i = 0; i < 5; i++) await gs[i % 2]!.command({ op: 'append', key: 'k', value: String(i) });
    expect(await gs[0]!.query({ op: 'get', key: 'k' })).toBe('201234');
    expect(gs[2]!.status().applied).toBeLessThanOrEqual(removedAt);
    expect(await gs[2]!.query({ op: 'get', key: 'k' }, { consistency: 'stale' })).toBe('2');
    // A bootstrap member must still be this node or a known peer.
    expect(() => ns[0]!.openGroup('other', { members: ['n1', 'n3'], stateMachine: kvStateMachine() })).toThrow(
      InvalidArgumentError,
    );
    expect(() => ns[0]!.setPeer('n1', '127.0.0.1:1')).toThrow(InvalidArgumentError);
    expect(() => ns[0]!.setPeer('n9', 'nowhere')).toThrow(InvalidArgumentError);
  }, 60_000);
});

describe('raft node: joining a group as an empty replica', () => {
  it('a fourth node joins empty, catches up by snapshot, is promoted; an old member leaves; writes go on', async () => {
    const ids = ['n1', 'n2', 'n3'];
    const ns = await Promise.all(ids.map(async (id) => node(id, await newDir(id))));
    for (const a of ns) for (const b of ns) if (a !== b) a.setPeer(b.id, addr(b));
    const open = (n: RaftNode): Kv =>
      n.openGroup('kv', { members: ids, stateMachine: kvStateMachine(), snapshotEntries: 20 });
    const gs = ns.map(open);
    await Promise.all(gs.map((g) => g.ready({ timeoutMs: 15_000 })));
    for (let i = 0; i < 60; i++) await gs[i % 3]!.command({ op: 'append', key: 'k', value: String(i % 10) });
    // The log has been compacted: the joiner can only start from a snapshot.
    await until(() => ns.every((n) => n.storedGroups().includes('kv')), 'groups stored');
    const dir4 = await newDir('n4');
    const n4 = await node('n4', dir4);
    for (const n of ns) {
      n.setPeer('n4', addr(n4));
      n4.setPeer(n.id, addr(n));
    }
    expect(() => n4.openGroup('kv', { join: true, stateMachine: kvStateMachine() } as never)).toThrow(
      /founding voters/,
    );
    // It starts from the founding membership, like every replica, with its votes held until it caught up.
    const g4: Kv = n4.openGroup('kv', {
      members: ids,
      join: true,
      stateMachine: kvStateMachine(),
      snapshotEntries: 20,
    });
    expect(g4.status().membership).toEqual({ voters: ids, learners: [] });
    expect(g4.status().votesHeld).toBe('leader-seen');
    expect((await gs[0]!.changeMembership({ type: 'addLearner', node: 'n4' }, { timeoutMs: 15_000 })).learners).toEqual(
      ['n4'],
    );
    // Asking again for a change the membership already has resolves (a retry, or two callers): not refused.
    const repeated = await gs[1]!.changeMembership({ type: 'addLearner', node: 'n4' }, { timeoutMs: 15_000 });
    expect(repeated.learners).toEqual(['n4']);
    await until(() => g4.status().applied >= gs[0]!.status().applied, 'n4 to catch up');
    expect(g4.status().snapshotIndex).toBeGreaterThan(0);
    const want = Array.from({ length: 60 }, (_, i) => String(i % 10)).join('');
    expect(await g4.query({ op: 'get', key: 'k' }, { consistency: 'stale' })).toBe(want);
    await gs[1]!.changeMembership({ type: 'addVoter', node: 'n4' }, { timeoutMs: 15_000 });
    await gs[2]!.changeMembership({ type: 'remove', node: 'n1' }, { timeoutMs: 15_000 });
    const live = [gs[1]!, gs[2]!, g4];
    for (let i = 0; i < 30; i++)
      await live[i % 3]!.command({ op: 'append', key: 'k', value: 'x' }, { timeoutMs: 15_000 });
    const final = want + 'x'.repeat(30);
    for (const g of live) expect(await g.query({ op: 'get', key: 'k' })).toBe(final);
    expect([...g4.status().membership.voters].sort()).toEqual(['n2', 'n3', 'n4']);
    // n4 restarts (on another port): `join` recovers what it holds, as a voter, and it serves again.
    await stop(n4);
    const again = await node('n4', dir4, { n2: addr(ns[1]!), n3: addr(ns[2]!) });
    ns[1]!.setPeer('n4', addr(again));
    ns[2]!.setPeer('n4', addr(again));
    expect(again.storedGroups()).toEqual(['kv']);
    const g4again: Kv = again.openGroup('kv', {
      members: ids,
      join: true,
      stateMachine: kvStateMachine(),
      snapshotEntries: 20,
    });
    // Recovered, not new: no hold.
    expect(g4again.status().votesHeld).toBeUndefined();
    expect([...g4again.status().membership.voters].sort()).toEqual(['n2', 'n3', 'n4']);
    await g4again.command({ op: 'append', key: 'k', value: 'y' }, { timeoutMs: 15_000 });
    expect(await g4again.query({ op: 'get', key: 'k' })).toBe(final + 'y');
    // n1 can now drop its replica for good.
    await ns[0]!.dropGroup('kv');
    expect(ns[0]!.storedGroups()).toEqual([]);
  }, 90_000);
});

describe('raft node: closing and dropping groups', () => {
  it('dropGroup fails pending calls, deletes the group durably (not back after a restart); closeGroup keeps it', async () => {
    const dir = await newDir('solo');
    let n = await node('solo', dir);
    const g: Kv = n.openGroup('kv', { members: ['solo'], stateMachine: kvStateMachine(), snapshotEntries: 5 });
    const other: Kv = n.openGroup('other', { members: ['solo'], stateMachine: kvStateMachine() });
    await g.ready({ timeoutMs: 10_000 });
    for (let i = 0; i < 12; i++) await g.command({ op: 'append', key: 'k', value: 'a' });
    await other.command({ op: 'put', key: 'o', value: '1' }, { timeoutMs: 10_000 });
    const hexName = Buffer.from('kv').toString('hex');
    expect((await readdir(dir)).some((f) => f.startsWith(`snap-${hexName}-`))).toBe(true);
    // closeGroup: pending calls fail, the group stays stored and reopens with its state.
    const pending = g.query({ op: 'get', key: 'k' }, { consistency: 'linearizable' });
    await n.closeGroup('other');
    await expect(other.command({ op: 'put', key: 'o', value: '2' })).rejects.toBeInstanceOf(ClosedError);
    const reopened: Kv = n.openGroup('other', { members: ['solo'], stateMachine: kvStateMachine() });
    await reopened.ready({ timeoutMs: 10_000 });
    expect(await reopened.query({ op: 'get', key: 'o' })).toBe('1');
    await pending;
    // dropGroup: a call on its way fails with ClosedError, and the state is gone.
    const inFlight = g.command({ op: 'append', key: 'k', value: 'b' }).catch((e: unknown) => e);
    await n.dropGroup('kv');
    const err = await inFlight;
    // Applied before the close, or failed with ClosedError: never another error, never left hanging.
    expect(err instanceof ClosedError || !(err instanceof Error)).toBe(true);
    await expect(g.query({ op: 'get', key: 'k' }, { consistency: 'stale' })).rejects.toBeInstanceOf(ClosedError);
    // A group that cannot commit (its other voter never answers): its pending command fails with ClosedError.
    n.setPeer('ghost', '127.0.0.1:1');
    const stuck: Kv = n.openGroup('stuck', { members: ['solo', 'ghost'], stateMachine: kvStateMachine() });
    const waiting = stuck.command({ op: 'put', key: 's', value: '1' }, { timeoutMs: 60_000 }).catch((e: unknown) => e);
    await n.dropGroup('stuck');
    expect(await waiting).toBeInstanceOf(ClosedError);
    expect(n.storedGroups()).toEqual(['other']);
    expect((await readdir(dir)).some((f) => f.startsWith(`snap-${hexName}-`))).toBe(false);
    await stop(n);
    n = await node('solo', dir);
    expect(n.storedGroups()).toEqual(['other']); // neither kv nor stuck
    // Opened again, the name is a new group: empty.
    const fresh: Kv = n.openGroup('kv', { members: ['solo'], stateMachine: kvStateMachine() });
    await fresh.ready({ timeoutMs: 10_000 });
    expect(await fresh.query({ op: 'get', key: 'k' })).toBeNull();
    const kept: Kv = n.openGroup('other', { members: ['solo'], stateMachine: kvStateMachine() });
    await kept.ready({ timeoutMs: 10_000 });
    expect(await kept.query({ op: 'get', key: 'o' })).toBe('1');
  }, 60_000);
});
