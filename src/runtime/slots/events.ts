/**
 * The events of a slots member: what the application must do (prepare, release), what it gained or lost (primary
 * roles with their fencing epochs), and what happened to the member (joined, fenced, sessionLost, error, left).
 */
import type { ErrorEvent } from '../../events.js';

export type PrimaryLostReason = 'planned' | 'fenced' | 'failed' | 'sessionLost' | 'leaving';

export interface SlotsEvents {
  joined: { readonly nodeId: string; readonly sessionId: string };
  /** Migrate these slots' data in, then call markReady(slot) for each. */
  prepare: { readonly slots: readonly number[] };
  /** Slots this node was preparing that the plan no longer assigns it: stop migrating, drop what came in. */
  cancelled: { readonly slots: readonly number[] };
  /**
   * Slots this node may now drop (enough ready replicas elsewhere): stop serving, then call release(slot). A slot
   * whose release was refused or failed is announced again while it stays releasable.
   */
  releasable: { readonly slots: readonly number[] };
  /** This node is now the primary of these slots; pass `epoch` to what it writes so stale primaries are refused. */
  primaryGained: { readonly slots: readonly { readonly slot: number; readonly epoch: number }[] };
  /** This node is no longer primary of these slots (isPrimary() is already false when this fires). */
  primaryLost: { readonly slots: readonly number[]; readonly reason: PrimaryLostReason };
  /**
   * A slot was released: `readyElsewhere` are the other assigned nodes whose readiness the release checked
   * (atomically: their ready keys were unchanged when it committed), `needed` how many it required, `revision`
   * the store revision it committed at (a counted replica may release the slot itself after that).
   */
  released: {
    readonly slot: number;
    readonly readyElsewhere: readonly string[];
    readonly needed: number;
    readonly failed: boolean;
    readonly revision: number;
  };
  /** Every slot this node held is gone from it (its session was lost, or it left): its copies are stale. */
  slotsDropped: { readonly slots: readonly number[]; readonly reason: 'sessionLost' | 'leaving' };
  /** The routing table changed (`version` is the new table's). */
  routingChanged: { readonly version: number };
  coordinatorElected: { readonly nodeId: string; readonly token: number };
  planWritten: { readonly generation: number; readonly changedSlots: number };
  fenced: { readonly safeUntilMs: number };
  unfenced: Record<string, never>;
  sessionLost: { readonly sessionId: string; readonly cause: unknown };
  /** Background errors (store unavailable, corrupt data, a throwing listener); the member keeps going. */
  error: ErrorEvent;
  left: Record<string, never>;
}
