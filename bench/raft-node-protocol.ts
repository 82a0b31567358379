/**
 * Messages between `npm run bench -- raft` (the RebalancerTarget of bench/raft-targets.ts) and its node processes
 * (bench/raft-node.ts), over the IPC channel of child_process.fork. Types only.
 *
 * Order: the parent sends one `NodeInit`; the node answers `ready` (or `error`) once it listens and has opened
 * its groups (not once they have leaders: the parent polls `status` for that). Then requests, each answered with
 * the same `id` (several may be outstanding: `status` during a `run`):
 *   run       this node's share of the closed-loop load        → part
 *   arm       one put on the first group                       → armed
 *   failover  probe until a put succeeds again                 → recovered
 *   status    roles, leaders, terms, memory                    → status
 *   stop      close the node (log and transport) and exit      → stopped, then the process exits
 */
import type { LoadPart } from './raft-load.js';
import type { FailoverRequest, FailoverResult, RunRequest } from './raft-protocol.js';

export interface NodeInit {
  readonly id: string;
  readonly dataDir: string;
  /** host:port to listen on for peers. */
  readonly listen: string;
  readonly peers: Readonly<Record<string, string>>;
  readonly secret: string;
  readonly tickMs: number;
  readonly electionTicks: number;
  /** The groups to open, each with the three nodes as its voters; the first is the one `arm`/`failover` use. */
  readonly groups: readonly string[];
}

export interface NodeRunRequest extends RunRequest {
  /** The groups this share writes to: a put goes to the group its key hashes to (a sharded key-value store). */
  readonly groups: readonly string[];
}

/** This node's view of its groups. */
export interface NodeStatus {
  readonly pid: number;
  readonly groups: number;
  /** Groups this node leads. */
  readonly leaderOf: number;
  /** Of those, how many are quiesced (no heartbeats). */
  readonly quiescedLeaderOf: number;
  /** Groups in which this node knows a leader (itself or another). */
  readonly withLeader: number;
  /** The highest term of any group here (1000 groups with terms near 1–2: no election storm). */
  readonly maxTerm: number;
  readonly sumTerms: number;
  /** The first group's view: role, leader, term, commit and apply indexes. */
  readonly first: {
    readonly role: string;
    readonly leader: string | undefined;
    readonly term: number;
    readonly committed: number;
    readonly applied: number;
  };
  readonly rssBytes: number;
  readonly heapUsedBytes: number;
}

export type NodeRequest =
  | { readonly id: number; readonly run: NodeRunRequest }
  | { readonly id: number; readonly arm: { readonly callTimeoutMs: number } }
  | { readonly id: number; readonly failover: FailoverRequest }
  | { readonly id: number; readonly status: true }
  | { readonly id: number; readonly stop: true };

export type NodeReply =
  | { readonly ready: true; readonly pid: number }
  | { readonly id: number; readonly part: LoadPart }
  | { readonly id: number; readonly armed: true }
  | { readonly id: number; readonly recovered: FailoverResult }
  | { readonly id: number; readonly status: NodeStatus }
  | { readonly id: number; readonly stopped: true }
  /** `id` absent: init failed. */
  | { readonly id?: number; readonly error: string };
