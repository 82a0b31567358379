/**
 * The events of a group member: what it runs (assigned, revoked, released, with fencing tokens), what happened to
 * its handlers, its session and its coordinator role, and background errors.
 */
import type { Protocol } from '../../protocol/groups/keys.js';
import type { StopReason } from '../../protocol/groups/member.js';
import type { ErrorEvent } from '../../events.js';

export interface GroupEvents {
  joined: { readonly nodeId: string; readonly sessionId: string };
  coordinatorElected: { readonly nodeId: string; readonly token: number };
  coordinatorLost: { readonly token: number };
  rebalanceStarted: { readonly generation: number; readonly moves: number; readonly protocol: Protocol };
  rebalanceCompleted: { readonly generation: number; readonly durationMs: number };
  assigned: { readonly resource: string; readonly fencingToken: number };
  revoked: { readonly resource: string; readonly reason: StopReason };
  released: { readonly resource: string; readonly fencingToken: number };
  fenced: { readonly safeUntilMs: number };
  unfenced: Record<string, never>;
  sessionLost: { readonly sessionId: string; readonly cause: unknown };
  handlerFailed: { readonly resource: string; readonly error: unknown };
  handlerStuck: { readonly resource: string; readonly stoppingForMs: number };
  /** Background errors (store unavailable, corrupt data, a throwing listener); the member keeps going. */
  error: ErrorEvent;
  left: Record<string, never>;
}
