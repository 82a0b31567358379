/**
 * Messages between `npm run bench -- fleet` (bench/fleet.ts) and its fleet node processes (bench/fleet-node.ts),
 * over the IPC channel of child_process.fork. Types only.
 *
 * Order: the parent sends one `FleetNodeInit`; the node answers `ready` (or `error`) once joinFleet resolved (it is
 * registered and serves; replicas open as the coordinator places them). Then requests, each answered with the same
 * `id` (several may be outstanding):
 *   addGroups   add groups through this node (one at a time)            → added
 *   local       this node's replicas, leaders, memory, errors           → local
 *   run         this node's share of a closed-loop write load           → part
 *   describe    this node's replicas of some groups, one line each       → described
 *   deactivate  drain and leave (FleetNode.deactivate)                  → deactivated, then the process exits
 *   stop        close at once and exit                                   → stopped, then the process exits
 */
import type { LoadPart } from './raft-load.js';
import type { RunRequest } from './raft-protocol.js';

export interface FleetNodeInit {
  readonly id: string;
  readonly zone: string;
  /** host:port of the Raft transport. */
  readonly address: string;
  readonly dataDir: string;
  /** The control store: sqlite:PATH or postgres://… (openStore). */
  readonly storeUrl: string;
  readonly namespace: string;
  readonly fleet: string;
  readonly secret: string;
  readonly tickMs: number;
  readonly electionTicks: number;
  readonly sessionTtlMs: number;
  readonly gracePeriodMs: number;
  readonly minNodes: number;
  /** joinFleet's maxConcurrentChanges (membership changes at once on this node); undefined: the default (16). */
  readonly maxConcurrentChanges: number | undefined;
}

export interface FleetRunRequest extends RunRequest {
  /** The groups this share writes to: a put goes to the group its key hashes to. */
  readonly groups: readonly string[];
}

export interface FleetLocalStatus {
  readonly pid: number;
  /** Replicas open here. */
  readonly replicas: number;
  /** Of those, the ones whose Raft role is leader. */
  readonly leaderOf: number;
  /** Of those, the quiesced ones (no heartbeats). */
  readonly quiescedLeaderOf: number;
  /**
   * When this node last became leader of each group it leads now (ms since the epoch, from the `led` event), only
   * when asked: the failover section takes the latest over the groups of the killed node.
   */
  readonly ledAtEpochMs?: Readonly<Record<string, number>>;
  readonly rssBytes: number;
  readonly heapUsedBytes: number;
  /** `error` events so far, and the first few. */
  readonly errors: number;
  readonly firstErrors: readonly string[];
}

export type FleetNodeRequest =
  | { readonly id: number; readonly addGroups: { readonly names: readonly string[]; readonly replicas: number } }
  | { readonly id: number; readonly local: { readonly ledAt: boolean } }
  | { readonly id: number; readonly run: FleetRunRequest }
  | { readonly id: number; readonly describe: { readonly groups: readonly string[] } }
  | { readonly id: number; readonly deactivate: { readonly timeoutMs: number } }
  | { readonly id: number; readonly stop: true };

export type FleetNodeReply =
  | { readonly ready: true; readonly pid: number }
  | { readonly id: number; readonly added: number }
  | { readonly id: number; readonly local: FleetLocalStatus }
  | { readonly id: number; readonly part: LoadPart }
  /** One line per replica of the groups asked about, for the report of a wait that timed out. */
  | { readonly id: number; readonly described: readonly string[] }
  | { readonly id: number; readonly deactivated: true }
  | { readonly id: number; readonly stopped: true }
  /** `id` absent: init failed. */
  | { readonly id?: number; readonly error: string };
