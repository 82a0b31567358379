/**
 * Three Raft nodes in this process, over loopback TCP, each with its own data directory: commands apply once on
 * every replica, any replica serves, reads at each consistency, restarts recover from disk, bad input is refused.
 */
import { mkdtemp, readdir, rm, stat, truncate } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it, onTestFinished } from 'vitest';
import {
  DataDirInUseError,
  InvalidArgumentError,
  LimitExceededError,
  NoQuorumError,
  NotLeaderError,
  StateMachineError,
  startRaftNode,
  type RaftGroup,
  type RaftNode,
} from '../../src/raft/api.js';
import type { KvOutput } from '../../src/sim/linearizability-models.js';
import { DiskFailedError, DiskStalledError } from '../../src/errors.js';
import { SimDisk } from '../../src/raft/wal/index.js';
import { allocatePorts } from '../harness/ports.js';
import { releasePort } from '../harness/processes.js';
import { kvStateMachine, type KvCommand, type KvQuery } from '../../src/sim/raft-kv.js';
import type { ReplicaObserver } from '../../src/raft/node/replica.js';

async function until(cond: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  for (let i = 0; i < timeoutMs / 10 && !cond(); i++) await new Promise((r) => setTimeout(r, 10));
  if (!cond()) throw new Error(`timed out waiting for ${what}`);
}

const SECRET = 'a test secret of enough bytes';
const IDS = ['n1', 'n2', 'n3'];
type Kv = RaftGroup<KvCommand, KvQuery, KvOutput, string | null>;

interface Cluster {
  dirs: Record<string, string>;
  ports: Record<string, number>;
  nodes: Map<string, RaftNode>;
}

let clusters: Cluster[] = [];
afterEach(async () => {
  for (const c of clusters) {
    for (const n of c.nodes.values()) await n.close();
    for (const d of Object.values(c.dirs)) await rm(d, { recursive: true, force: true });
    for (const p of Object.values(c.ports)) releasePort(p);
  }
  clusters = [];
});

async function cluster(
  o: {
    disks?: Record<string, SimDisk>;
    clocks?: Record<string, () => number>;
    observers?: Record<string, ReplicaObserver>;
  } = {},
): Promise<Cluster> {
  const c: Cluster = { dirs: {}, ports: {}, nodes: new Map() };
  const ports = await allocatePorts(IDS.length);
  for (const [i, id] of IDS.entries()) {
    c.dirs[id] = await mkdtemp(join(tmpdir(), `raft-${id}-`));
    c.ports[id] = ports[i]!;
  }
  clusters.push(c);
  await Promise.all(IDS.map((id) => start(c, id, o.disks?.[id], o.clocks?.[id], o.observers?.[id])));
  return c;
}

async function start(
  c: Cluster,
  id: string,
  disk?: SimDisk,
  clock?: () => number,
  observer?: ReplicaObserver,
): Promise<RaftNode> {
  const node = await startRaftNode({
    id,
    ...(disk ? {} : { dataDir: c.dirs[id]! }),
    io: { ...(disk ? { disk } : {}), ...(clock ? { clock } : {}), ...(observer ? { observer } : {}) },
    listen: `127.0.0.1:${c.ports[id]}`,
    peers: Object.fromEntries(IDS.filter((p) => p !== id).map((p) => [p, `127.0.0.1:${c.ports[p]}`])),
    secret: SECRET,
    tickMs: 20,
    electionTicks: 10,
  });
  c.nodes.set(id, node);
  return node;
}

function open(node: RaftNode, opts: { snapshotEntries?: number } = {}): Kv {
  return node.openGroup('kv', { members: IDS, stateMachine: kvStateMachine(), ...opts });
}

describe('raft nodes on loopback', () => {
  it('elect a leader; commands from every node apply once everywhere; reads see them', async () => {
    const c = await cluster();
    const groups = IDS.map((id) => open(c.nodes.get(id)!));
    await Promise.all(groups.map((g) => g.ready({ timeoutMs: 10_000 })));
    const leaders = groups.map((g) => g.status().leader);
    expect(new Set(leaders).size).toBe(1);
    for (let i = 0; i < 30; i++) {
      const g = groups[i % 3]!;
      await g.command({ op: 'append', key: 'k', value: String(i % 10) });
    }
    const expected = Array.from({ length: 30 }, (_, i) => String(i % 10)).join('');
    for (const g of groups) expect(await g.query({ op: 'get', key: 'k' })).toBe(expected);
    // Stale reads on a follower are served from its own state at once.
    const follower = groups.find((g) => g.status().role !== 'leader')!;
    await expect(follower.query({ op: 'get', key: 'missing' }, { consistency: 'stale' })).resolves.toBeNull();
    // Lease reads need the leader: a follower says where it is.
    const err = await follower.query({ op: 'get', key: 'k' }, { consistency: 'lease' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NotLeaderError);
    expect((err as NotLeaderError).leaderHint?.id).toBe(leaders[0]);
    expect((err as NotLeaderError).leaderHint?.address).toBe(`127.0.0.1:${c.ports[leaders[0]!]}`);
    const leader = groups.find((g) => g.status().role === 'leader')!;
    expect(await leader.query({ op: 'get', key: 'k' }, { consistency: 'lease' })).toBe(expected);
    // Each node's view of its connections: the leader's traffic goes both ways with every follower.
    for (const id of IDS) {
      const stats = c.nodes.get(id)!.peerStats();
      expect(Object.keys(stats).sort()).toEqual(IDS.filter((x) => x !== id).sort());
      for (const [peer, p] of Object.entries(stats)) {
        expect(p.connected).toBe(true);
        if (id !== leaders[0] && peer !== leaders[0]) continue; // followers do not talk to each other
        expect(p.sentMessages).toBeGreaterThan(0);
        expect(p.receivedMessages).toBeGreaterThan(0);
      }
    }
  }, 30_000);

  it('in flight together, 200 commands apply exactly once each; a restarted node recovers them from disk', async () => {
    const c = await cluster();
    const groups = IDS.map((id) => open(c.nodes.get(id)!, { snapshotEntries: 50 }));
    await groups[0]!.ready({ timeoutMs: 10_000 });
    await Promise.all(
      Array.from({ length: 200 }, (_, i) => groups[i % 3]!.command({ op: 'append', key: `k${i % 7}`, value: 'x' })),
    );
    const lengths = async (g: Kv): Promise<number[]> =>
      Promise.all(Array.from({ length: 7 }, async (_, k) => (await g.query({ op: 'get', key: `k${k}` }))!.length));
    const want = Array.from({ length: 7 }, (_, k) => Math.floor(200 / 7) + (k < 200 % 7 ? 1 : 0));
    expect(await lengths(groups[1]!)).toEqual(want);
    // Restart n2 from its data directory: it replays snapshot + log and serves the same state.
    await c.nodes.get('n2')!.close();
    const n2 = await start(c, 'n2');
    expect(n2.storedGroups()).toEqual(['kv']);
    const again = open(n2, { snapshotEntries: 50 });
    await again.ready({ timeoutMs: 10_000 });
    expect(await lengths(again)).toEqual(want);
  }, 30_000);

  it('ticks follow elapsed time: a leader whose clock moved past its lease in one step serves no lease read', async () => {
    // As after a SIGSTOP or a long pause: the clock has moved on, and no tick callback has run yet.
    const offsets: Record<string, number> = { n1: 0, n2: 0, n3: 0 };
    const clocks = Object.fromEntries(IDS.map((id) => [id, () => performance.now() + offsets[id]!]));
    const c = await cluster({ clocks });
    const groups = IDS.map((id) =>
      c.nodes.get(id)!.openGroup('kv', { members: IDS, stateMachine: kvStateMachine(), leaseReads: true }),
    );
    await groups[0]!.ready({ timeoutMs: 10_000 });
    await groups[0]!.command({ op: 'put', key: 'a', value: '1' });
    const leader = groups.find((g) => g.status().role === 'leader')!;
    expect(await leader.query({ op: 'get', key: 'a' }, { consistency: 'lease' })).toBe('1');
    offsets[leader.status().node] = 60_000;
    const read = leader
      .query({ op: 'get', key: 'a' }, { consistency: 'lease', timeoutMs: 1000 })
      .catch((e: unknown) => e);
    // Before answering it counted the ticks of that minute: check-quorum deposed it (it heard from nobody in them).
    expect(leader.status().role).not.toBe('leader');
    await read;
  }, 30_000);

  it('a follower whose clock moved past its election timeout in one step counts one tick: it does not campaign', async () => {
    // After an event-loop stall the tick timer runs before the sockets are read: counting the whole stall made every
    // follower of thousands of groups campaign although its leader's heartbeats were waiting (an election storm).
    const offsets: Record<string, number> = { n1: 0, n2: 0, n3: 0 };
    const clocks = Object.fromEntries(IDS.map((id) => [id, () => performance.now() + offsets[id]!]));
    const campaigns: string[] = [];
    const observer = (id: string): ReplicaObserver => ({
      opened: () => undefined,
      ready: (_g, _n, rd) => {
        for (const m of rd.messages) if (m.type === 'preVote' || m.type === 'vote') campaigns.push(`${id} ${m.type}`);
      },
      applied: () => undefined,
      restored: () => undefined,
    });
    const c = await cluster({ clocks, observers: Object.fromEntries(IDS.map((id) => [id, observer(id)])) });
    const groups = IDS.map((id) => open(c.nodes.get(id)!));
    await groups[0]!.ready({ timeoutMs: 10_000 });
    await groups[0]!.command({ op: 'put', key: 'a', value: '1' });
    const leader = groups.find((g) => g.status().role === 'leader')!;
    const { term } = leader.status();
    const follower = groups.find((g) => g.status().role === 'follower')!;
    campaigns.length = 0;
    offsets[follower.status().node] = 60_000; // 300 election timeouts in one step
    await new Promise((r) => setTimeout(r, 400)); // 20 ticks: heartbeats reach it all along
    expect(campaigns).toEqual([]);
    expect(follower.status().role).toBe('follower');
    expect(leader.status()).toMatchObject({ role: 'leader', term });
    // Its clock still moves: once its leader is gone it campaigns and the survivors elect a leader.
    await c.nodes.get(leader.status().node)!.close();
    const rest = groups.filter((g) => g !== leader);
    await until(() => rest.some((g) => g.status().role === 'leader'), 'a new leader');
  }, 30_000);

  it('commands in flight across a leadership transfer apply exactly once', async () => {
    const c = await cluster();
    const groups = IDS.map((id) => open(c.nodes.get(id)!));
    await groups[0]!.ready({ timeoutMs: 10_000 });
    const leader = groups[0]!.status().leader!;
    const target = IDS.find((id) => id !== leader)!;
    const writes = Array.from({ length: 60 }, (_, i) => groups[i % 3]!.command({ op: 'append', key: 'k', value: 'x' }));
    groups[IDS.indexOf(leader)]!.transferLeadership(target);
    await Promise.all(writes);
    await until(() => groups[0]!.status().leader === target, 'the transfer');
    for (const g of groups) expect(await g.query({ op: 'get', key: 'k' })).toBe('x'.repeat(60));
  }, 30_000);

  it('a full disk: that node stops acknowledging and says so; the others go on', async () => {
    const disk = new SimDisk();
    const c = await cluster({ disks: { n1: disk } });
    const reported: unknown[] = [];
    c.nodes.get('n1')!.on('error', (e) => reported.push(e.error));
    const groups = IDS.map((id) => open(c.nodes.get(id)!));
    await groups[0]!.ready({ timeoutMs: 10_000 });
    await groups[0]!.command({ op: 'put', key: 'a', value: '1' });
    disk.failNext = Object.assign(new Error('ENOSPC: no space left on device'), { code: 'ENOSPC' });
    const onFull = await groups[0]!
      .command({ op: 'put', key: 'a', value: '2' }, { timeoutMs: 3000 })
      .catch((e: unknown) => e);
    expect(onFull).toBeInstanceOf(DiskFailedError);
    expect(reported.some((e) => e instanceof DiskFailedError)).toBe(true);
    expect(groups[0]!.status().failed).toBeInstanceOf(DiskFailedError);
    // n2 and n3 still form a majority (electing a new leader if n1 led).
    await groups[1]!.command({ op: 'put', key: 'b', value: '1' }, { timeoutMs: 10_000 });
    expect(await groups[2]!.query({ op: 'get', key: 'b' })).toBe('1');
  }, 30_000);

  it('a disk that stops answering: that node says so once, its leader steps down, the others go on', async () => {
    // Its fsyncs hang until released: a dying disk, a network volume that stopped answering.
    const disk = new SimDisk();
    const c = await cluster({ disks: { n1: disk } });
    const reported: unknown[] = [];
    c.nodes.get('n1')!.on('error', (e) => reported.push(e.error));
    const groups = IDS.map((id) => open(c.nodes.get(id)!));
    await groups[0]!.ready({ timeoutMs: 10_000 });
    // n1 leads, so that its stall is the group's problem until it steps down.
    if (groups[0]!.status().role !== 'leader') {
      const leader = groups.find((g) => g.status().role === 'leader')!;
      leader.transferLeadership('n1');
      await until(() => groups[0]!.status().role === 'leader', 'n1 to lead', 10_000);
    }
    await groups[0]!.command({ op: 'put', key: 'a', value: '1' });
    disk.holdSyncs = true;
    // Whatever happens below, the node can close (its close waits for the log's writes).
    onTestFinished(() => {
      disk.holdSyncs = false;
      disk.release();
    });
    const stuck = groups[0]!.command({ op: 'put', key: 'a', value: '2' }, { timeoutMs: 20_000 }).catch((e) => e);
    // The others elect a leader without n1 and go on.
    await groups[1]!.command({ op: 'put', key: 'b', value: '1' }, { timeoutMs: 15_000 });
    expect(groups[0]!.status().role).not.toBe('leader');
    // n1 says why, once, after DISK_STALL_REPORT_MS.
    await until(() => reported.some((e) => e instanceof DiskStalledError), 'the stall reported', 15_000);
    const stalls = reported.filter((e) => e instanceof DiskStalledError);
    expect(stalls).toHaveLength(1);
    expect((stalls[0] as DiskStalledError).code).toBe('TIMEOUT');
    expect((stalls[0] as DiskStalledError).message).toMatch(/Check the disk/);
    // The disk answers again: n1 catches up and serves; nothing acknowledged was lost.
    disk.holdSyncs = false;
    disk.release();
    await stuck;
    await until(() => groups[0]!.status().applied >= groups[1]!.status().applied, 'n1 to catch up', 15_000);
    expect(await groups[0]!.query({ op: 'get', key: 'b' })).toBe('1');
    expect(reported.filter((e) => e instanceof DiskStalledError)).toHaveLength(1);
  }, 60_000);

  it('a torn log tail: the node recovers the valid prefix and catches up from the others', async () => {
    const c = await cluster();
    let groups = IDS.map((id) => open(c.nodes.get(id)!));
    await groups[0]!.ready({ timeoutMs: 10_000 });
    for (let i = 0; i < 20; i++) await groups[i % 3]!.command({ op: 'append', key: 'k', value: 'x' });
    await c.nodes.get('n3')!.close();
    const segments = (await readdir(c.dirs['n3']!)).filter((f) => f.endsWith('.wal')).sort();
    const last = join(c.dirs['n3']!, segments.at(-1)!);
    await truncate(last, (await stat(last)).size - 7); // a write torn by a power loss
    const n3 = await start(c, 'n3');
    groups = [groups[0]!, groups[1]!, open(n3)];
    await groups[2]!.ready({ timeoutMs: 10_000 });
    expect(await groups[2]!.query({ op: 'get', key: 'k' })).toBe('x'.repeat(20));
  }, 30_000);

  it('membership: remove a voter, add it back as a learner, promote it', async () => {
    const c = await cluster();
    const groups = IDS.map((id) => open(c.nodes.get(id)!));
    await groups[0]!.ready({ timeoutMs: 10_000 });
    await groups[0]!.command({ op: 'put', key: 'a', value: '1' });
    expect((await groups[0]!.changeMembership({ type: 'remove', node: 'n3' })).voters).toEqual(['n1', 'n2']);
    await groups[1]!.command({ op: 'put', key: 'a', value: '2' }); // two voters commit alone
    expect((await groups[0]!.changeMembership({ type: 'addLearner', node: 'n3' })).learners).toEqual(['n3']);
    const m = await groups[1]!.changeMembership({ type: 'addVoter', node: 'n3' });
    expect([...m.voters].sort()).toEqual(IDS);
    await until(() => groups[2]!.status().applied >= groups[0]!.status().applied, 'n3 to catch up');
    expect(await groups[2]!.query({ op: 'get', key: 'a' })).toBe('2');
    await expect(groups[0]!.changeMembership({ type: 'remove', node: 'n9' })).rejects.toBeInstanceOf(
      InvalidArgumentError,
    );
  }, 30_000);

  it('one node per data directory: a second start on it is refused until the first closes', async () => {
    const c = await cluster();
    const err = await start(c, 'n1').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DataDirInUseError);
    expect((err as DataDirInUseError).message).toMatch(/in use by process \d+ \(this one\)/);
    await c.nodes.get('n1')!.close();
    const again = await start(c, 'n1');
    expect(again.storedGroups()).toEqual([]);
  }, 30_000);

  it('a group without a majority: NoQuorumError, nothing applied', async () => {
    const c = await cluster();
    const g1 = open(c.nodes.get('n1')!);
    // Only n1 opened the group: no peer answers for it.
    const err = await g1.command({ op: 'put', key: 'a', value: '1' }, { timeoutMs: 800 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NoQuorumError);
    expect(g1.status().applied).toBe(0);
  }, 30_000);

  it('bad input: oversized commands, bad options, a throwing state machine stops the replica', async () => {
    const c = await cluster();
    const n1 = c.nodes.get('n1')!;
    expect(() =>
      n1.openGroup('kv', { members: IDS, stateMachine: kvStateMachine(), snapshotEntrys: 5 } as never),
    ).toThrow(/did you mean "snapshotEntries"/);
    expect(() => n1.openGroup('bad name!', { members: IDS, stateMachine: kvStateMachine() })).toThrow(
      InvalidArgumentError,
    );
    expect(() => n1.openGroup('kv2', { members: ['n9'], stateMachine: kvStateMachine() })).toThrow(/neither this node/);
    const groups = IDS.map((id) =>
      c.nodes.get(id)!.openGroup('kv', { members: IDS, stateMachine: kvStateMachine(), maxCommandBytes: 1024 }),
    );
    await groups[0]!.ready({ timeoutMs: 10_000 });
    await expect(groups[0]!.command({ op: 'put', key: 'a', value: 'x'.repeat(2000) })).rejects.toBeInstanceOf(
      LimitExceededError,
    );
    // A misspelt per-call option is refused, not ignored (the default timeout would be used without a word).
    await expect(groups[0]!.command({ op: 'put', key: 'a', value: 'x' }, { timeoutMS: 5 } as never)).rejects.toThrow(
      /command options has an unknown option "timeoutMS" \(did you mean "timeoutMs"\?\)/,
    );
    await expect(groups[0]!.query({ op: 'get', key: 'a' }, { consistancy: 'stale' } as never)).rejects.toThrow(
      /did you mean "consistency"/,
    );
    await expect(groups[0]!.query({ op: 'get', key: 'a' }, null as never)).rejects.toThrow(
      /query options must be an object, got null/,
    );
    const reported: unknown[] = [];
    for (const n of c.nodes.values()) n.on('error', (e) => reported.push(e.error));
    const bomb = IDS.map((id) =>
      c.nodes.get(id)!.openGroup('bomb', {
        members: IDS,
        stateMachine: {
          ...kvStateMachine(),
          command: (s: Map<string, string>, cmd: KvCommand) => {
            if (cmd.op === 'put' && cmd.value === 'boom') throw new Error('the state machine refuses');
            if (cmd.op === 'put') s.set(cmd.key, cmd.value);
            return { state: s, result: null };
          },
        },
      }),
    );
    await bomb[0]!.ready({ timeoutMs: 10_000 });
    await bomb[0]!.command({ op: 'put', key: 'a', value: 'fine' });
    const err = await bomb[0]!.command({ op: 'put', key: 'a', value: 'boom' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StateMachineError);
    expect(bomb[0]!.status().failed).toBeInstanceOf(StateMachineError);
    // Every replica stops at the same entry and says so; none skips it.
    await until(() => reported.length === 3, 'all three replicas to report the failure');
    expect(reported.every((e) => e instanceof StateMachineError && e.index === 4)).toBe(true);
    expect(bomb.map((g) => g.status().applied)).toEqual([3, 3, 3]);
    // The kv group on the same nodes goes on.
    await expect(groups[1]!.command({ op: 'put', key: 'b', value: '1' })).resolves.toBeNull();
  }, 30_000);
});
