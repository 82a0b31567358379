/**
 * Messages between `npm run bench -- raft` (bench/raft.ts) and its load worker (bench/raft-worker.ts), over the
 * IPC channel of child_process.fork. Types only: both sides import this file, neither imports the other.
 *
 * Order: the parent sends one `WorkerInit` (which target, how to reach it); the worker answers `ready` (or
 * `error`). Then requests, one at a time, each answered with the same `id`:
 *   run      closed-loop load (bench/raft-load.ts)       → result
 *   arm      open the failover probe, one put succeeds    → armed
 *   failover probe until a put succeeds again           → recovered
 *   close    close the clients and exit                  → (the worker exits)
 */
import type { LoadResult } from './raft-load.js';

/** How the worker reaches a target. One entry per target kind of bench/raft-worker.ts's client table. */
export type WorkerInit = { readonly kind: 'etcd'; readonly endpoints: readonly string[] };

export type WorkerKind = WorkerInit['kind'];

export interface RunRequest {
  readonly inFlight: number;
  readonly durationMs: number;
  readonly warmupMs: number;
  readonly seed: number;
}

export interface FailoverRequest {
  /** When the leader was killed, in ms since the epoch (the same clock in every process of one host). */
  readonly sinceEpochMs: number;
  /** A new attempt starts every intervalMs, whether or not earlier ones have answered. */
  readonly intervalMs: number;
  /** Each attempt gives up after this long (and counts as failed). */
  readonly callTimeoutMs: number;
  /** Give up (answer `error`) when no put succeeded within this long after sinceEpochMs. */
  readonly maxMs: number;
}

export interface FailoverResult {
  /** Completion of the first put that succeeded, in ms since the epoch. */
  readonly recoveredEpochMs: number;
  /** From the kill to that completion. */
  readonly ms: number;
  readonly attempts: number;
  readonly failures: number;
  readonly firstFailure?: string;
}

export type ParentMessage =
  | { readonly id: number; readonly run: RunRequest }
  | { readonly id: number; readonly arm: { readonly callTimeoutMs: number } }
  | { readonly id: number; readonly failover: FailoverRequest }
  | { readonly id: number; readonly close: true };

export type WorkerMessage =
  | { readonly ready: true }
  | { readonly id: number; readonly result: LoadResult }
  | { readonly id: number; readonly armed: true }
  | { readonly id: number; readonly recovered: FailoverResult }
  /** `id` absent: init failed. */
  | { readonly id?: number; readonly error: string };
