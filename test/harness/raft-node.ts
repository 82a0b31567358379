/**
 * One Raft node in a process of its own, for test/harness/raft-cluster.ts (the real-process tests of
 * test/raft/processes.test.ts). Run as `node --import tsx test/harness/raft-node.ts` with an IPC channel and its
 * configuration as JSON in RAFT_NODE_CONFIG (RaftNodeConfig below).
 *
 * It starts a RaftNode (its write-ahead log in `dataDir`), opens the key-value group (src/sim/raft-kv.ts, the
 * checker's kvModel) and serves the parent over IPC: `command`, `query` (with a consistency), `status`, `close`.
 * Every request is answered by id with `{ ok: true, result }` or `{ ok: false, code, message, outcome? }`: the
 * error's code, so the parent can tell "certainly not applied" from "outcome unknown" without sharing classes
 * across processes. Unasked, it sends `ready` once the group is open, and `role` (its term and role) whenever the
 * node reports a leader change, for the parent's election-safety monitor.
 *
 * It exits with its parent: a closed IPC channel ends it (and setpriv's pdeathsig covers a SIGKILLed parent).
 */
import { RebalancerError, TimeoutError, startRaftNode, type RaftGroup } from '../../src/raft/api.js';
import type { KvOutput } from '../../src/sim/linearizability-models.js';
import { kvStateMachine, type KvCommand, type KvQuery } from '../../src/sim/raft-kv.js';

export interface RaftNodeConfig {
  readonly id: string;
  readonly dataDir: string;
  /** host:port to listen on. */
  readonly listen: string;
  /** Every other node: id → the address this node dials it at (a proxy's). */
  readonly peers: Readonly<Record<string, string>>;
  readonly members: readonly string[];
  readonly secret: string;
  readonly tickMs: number;
  readonly electionTicks: number;
  readonly requestTimeoutMs: number;
  readonly leaseReads: boolean;
  /** Compact the log every this many applied entries (small: restarts and catch-ups go through snapshots too). */
  readonly snapshotEntries: number;
}

export type NodeRequest =
  | { readonly id: number; readonly op: 'command'; readonly command: KvCommand; readonly timeoutMs?: number }
  | {
      readonly id: number;
      readonly op: 'query';
      readonly query: KvQuery;
      readonly consistency: 'linearizable' | 'lease' | 'stale';
      readonly timeoutMs?: number;
    }
  | { readonly id: number; readonly op: 'status' }
  | { readonly id: number; readonly op: 'close' };

/** What `status` answers: the group's status, reduced to plain data. */
export interface NodeStatus {
  readonly role: 'follower' | 'preCandidate' | 'candidate' | 'leader';
  readonly leader: string | undefined;
  readonly term: number;
  readonly committed: number;
  readonly applied: number;
  readonly lastIndex: number;
  readonly failed: string | undefined;
}

export type NodeReply =
  | { readonly id: number; readonly ok: true; readonly result: unknown }
  | {
      readonly id: number;
      readonly ok: false;
      /** A RebalancerError's code, or 'INTERNAL' for anything else (a bug: the parent fails the test). */
      readonly code: string;
      readonly message: string;
      /** For TIMEOUT: whether a command may still apply. */
      readonly outcome?: 'unknown' | 'not-applied';
    };

export type NodeEvent =
  | { readonly event: 'ready'; readonly pid: number }
  | { readonly event: 'role'; readonly term: number; readonly role: NodeStatus['role'] }
  | { readonly event: 'error'; readonly code: string; readonly message: string }
  | { readonly event: 'failed'; readonly message: string };

type Kv = RaftGroup<KvCommand, KvQuery, KvOutput, string | null>;

function send(m: NodeReply | NodeEvent, then: () => void = () => undefined): void {
  // The parent may be gone (then the 'disconnect' handler ends us): nothing to do about a failed send.
  if (process.connected) process.send!(m, undefined, undefined, () => then());
  else then();
}

function replyError(id: number, err: unknown): NodeReply {
  if (err instanceof TimeoutError) return { id, ok: false, code: err.code, message: err.message, outcome: err.outcome };
  if (err instanceof RebalancerError) return { id, ok: false, code: err.code, message: err.message };
  return { id, ok: false, code: 'INTERNAL', message: err instanceof Error ? (err.stack ?? err.message) : String(err) };
}

async function main(): Promise<void> {
  const raw = process.env['RAFT_NODE_CONFIG'];
  if (process.send === undefined || raw === undefined) {
    process.stderr.write('test/harness/raft-node.ts is started by raft-cluster.ts (IPC and RAFT_NODE_CONFIG)\n');
    process.exit(2);
  }
  const config = JSON.parse(raw) as RaftNodeConfig;
  const node = await startRaftNode({
    id: config.id,
    dataDir: config.dataDir,
    listen: config.listen,
    peers: config.peers,
    secret: config.secret,
    tickMs: config.tickMs,
    electionTicks: config.electionTicks,
    requestTimeoutMs: config.requestTimeoutMs,
  });
  node.on('error', (e) => {
    const code = e.error instanceof RebalancerError ? e.error.code : 'INTERNAL';
    const message = e.error instanceof Error ? e.error.message : String(e.error);
    process.stdout.write(`error ${code}: ${message}\n`);
    send({ event: 'error', code, message });
  });
  const kv: Kv = node.openGroup('kv', {
    members: config.members,
    stateMachine: kvStateMachine(),
    leaseReads: config.leaseReads,
    snapshotEntries: config.snapshotEntries,
  });
  let lastRole = '';
  const noteRole = (): void => {
    const s = kv.status();
    const key = `${s.term}/${s.role}`;
    if (key === lastRole) return;
    lastRole = key;
    process.stdout.write(`${JSON.stringify({ t: Date.now(), term: s.term, role: s.role, leader: s.leader })}\n`);
    send({ event: 'role', term: s.term, role: s.role });
  };
  node.on('leader', noteRole);

  let closing = false;
  const close = async (): Promise<void> => {
    if (closing) return;
    closing = true;
    await node.close();
  };
  process.on('disconnect', () => {
    void close().finally(() => process.exit(0));
  });

  process.on('message', (m: NodeRequest) => {
    void handle(m).then(
      (reply) => send(reply, m.op === 'close' ? () => process.exit(0) : undefined),
      (err: unknown) => send(replyError(m.id, err)),
    );
  });

  async function handle(m: NodeRequest): Promise<NodeReply> {
    switch (m.op) {
      case 'command': {
        const result = await kv.command(m.command, m.timeoutMs === undefined ? {} : { timeoutMs: m.timeoutMs });
        return { id: m.id, ok: true, result };
      }
      case 'query': {
        const options = {
          consistency: m.consistency,
          ...(m.timeoutMs === undefined ? {} : { timeoutMs: m.timeoutMs }),
        };
        return { id: m.id, ok: true, result: await kv.query(m.query, options) };
      }
      case 'status': {
        noteRole();
        const s = kv.status();
        const status: NodeStatus = {
          role: s.role,
          leader: s.leader,
          term: s.term,
          committed: s.committed,
          applied: s.applied,
          lastIndex: s.lastIndex,
          failed: s.failed?.message,
        };
        return { id: m.id, ok: true, result: status };
      }
      case 'close': {
        await close();
        return { id: m.id, ok: true, result: null };
      }
    }
  }

  send({ event: 'ready', pid: process.pid });
}

main().catch((err: unknown) => {
  process.stderr.write(
    `raft-node failed to start: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`,
  );
  send({ event: 'failed', message: err instanceof Error ? err.message : String(err) });
  process.exit(1);
});
