/**
 * A Rebalancer Raft node process of `npm run bench -- raft` (not a benchmark by itself): forked by the
 * RebalancerTarget (bench/raft-targets.ts) with an IPC channel; protocol in bench/raft-node-protocol.ts.
 *
 * Rebalancer's Raft is a library embedded in the application, so the application — here the bench's closed-loop
 * load (bench/raft-load.ts) — runs in this process and calls `group.command()` directly; a follower forwards the
 * proposal to the leader. There is no client process: the cost of the client side is part of this process's CPU.
 *
 * The log is on disk with fsync on (FsDisk, the default: one fdatasync per group commit).
 */
import { startRaftNode, type RaftGroup, type RaftNode } from '../src/raft/api.js';
import type { KvOutput } from '../src/sim/linearizability-models.js';
import { kvStateMachine, type KvCommand, type KvQuery } from '../src/sim/raft-kv.js';
import { runLoadPart, type LoadPart } from './raft-load.js';
import type { NodeInit, NodeReply, NodeRequest, NodeRunRequest, NodeStatus } from './raft-node-protocol.js';
import { probeUntilRecovered } from './raft-probe.js';

type Kv = RaftGroup<KvCommand, KvQuery, KvOutput, string | null>;

const message = (err: unknown): string => (err instanceof Error ? err.message : String(err));

function send(m: NodeReply): void {
  // The parent may be gone (it kills us soon after); a failed send must not throw from here.
  if (process.connected) process.send!(m);
}

/** The kv state machine stores strings: a 16-byte value travels as base64 (24 characters). */
const asValue = (v: Uint8Array): string => Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('base64');

/** FNV-1a: which of `n` groups a key belongs to (a sharded key-value store routes by key). */
function shardOf(key: string, n: number): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < key.length; i++) {
    h ^= key.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return (h >>> 0) % n;
}

let node: RaftNode | undefined;
const groups = new Map<string, Kv>();
let firstGroup: Kv | undefined;
let errorsReported = 0;

async function init(i: NodeInit): Promise<void> {
  node = await startRaftNode({
    id: i.id,
    dataDir: i.dataDir,
    listen: i.listen,
    peers: i.peers,
    secret: i.secret,
    tickMs: i.tickMs,
    electionTicks: i.electionTicks,
  });
  node.on('error', (e) => {
    // Bounded: a node that keeps failing must not flood the bench's stderr.
    if (errorsReported++ < 20) process.stderr.write(`raft node ${i.id}: ${e.context}: ${message(e.error)}\n`);
  });
  const members = [i.id, ...Object.keys(i.peers)].sort();
  for (const name of i.groups) {
    groups.set(name, node.openGroup(name, { members, stateMachine: kvStateMachine() }));
  }
  firstGroup = groups.get(i.groups[0]!);
}

async function run(req: NodeRunRequest): Promise<LoadPart> {
  const targets = req.groups.map((g) => {
    const group = groups.get(g);
    if (group === undefined) throw new Error(`group ${g} is not open on this node`);
    return group;
  });
  return runLoadPart({
    inFlight: req.inFlight,
    durationMs: req.durationMs,
    warmupMs: req.warmupMs,
    seed: req.seed,
    put: async (key, value) => {
      await targets[targets.length === 1 ? 0 : shardOf(key, targets.length)]!.command({
        op: 'put',
        key,
        value: asValue(value),
      });
    },
  });
}

function status(): NodeStatus {
  let leaderOf = 0;
  let quiescedLeaderOf = 0;
  let withLeader = 0;
  let maxTerm = 0;
  let sumTerms = 0;
  for (const g of groups.values()) {
    const s = g.status();
    if (s.role === 'leader') {
      leaderOf++;
      if (s.quiesced) quiescedLeaderOf++;
    }
    if (s.leader !== undefined) withLeader++;
    maxTerm = Math.max(maxTerm, s.term);
    sumTerms += s.term;
  }
  const f = firstGroup!.status();
  const mem = process.memoryUsage();
  return {
    pid: process.pid,
    groups: groups.size,
    leaderOf,
    quiescedLeaderOf,
    withLeader,
    maxTerm,
    sumTerms,
    first: { role: f.role, leader: f.leader, term: f.term, committed: f.committed, applied: f.applied },
    rssBytes: mem.rss,
    heapUsedBytes: mem.heapUsed,
  };
}

async function handle(m: NodeRequest): Promise<void> {
  try {
    if ('run' in m) {
      send({ id: m.id, part: await run(m.run) });
    } else if ('arm' in m) {
      await firstGroup!.command(
        { op: 'put', key: 'bench/failover/arm', value: '' },
        { timeoutMs: m.arm.callTimeoutMs },
      );
      send({ id: m.id, armed: true });
    } else if ('failover' in m) {
      const g = firstGroup!;
      const recovered = await probeUntilRecovered(async (key, value, timeoutMs) => {
        await g.command({ op: 'put', key, value: asValue(value) }, { timeoutMs });
      }, m.failover);
      send({ id: m.id, recovered });
    } else if ('status' in m) {
      send({ id: m.id, status: status() });
    } else if ('stop' in m) {
      await node?.close();
      send({ id: m.id, stopped: true });
      process.exit(0);
    }
  } catch (err) {
    send({ id: m.id, error: message(err) });
  }
}

if (process.send === undefined) {
  process.stderr.write('bench/raft-node.ts is forked by bench/raft.ts (npm run bench -- raft), not run directly\n');
  process.exit(2);
}
// The parent's death closes the channel: exit with it, never outlive the bench.
process.on('disconnect', () => process.exit(0));
let initialized = false;
process.on('message', (raw: NodeInit | NodeRequest) => {
  if (!initialized) {
    initialized = true;
    init(raw as NodeInit).then(
      () => send({ ready: true, pid: process.pid }),
      (err: unknown) => send({ error: message(err) }),
    );
    return;
  }
  void handle(raw as NodeRequest);
});
