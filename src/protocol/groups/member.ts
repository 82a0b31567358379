/**
 * A member's decisions, sans IO: given what it read from the store and the
 * state of its own handlers, which resources should it acquire, stop,
 * release, restart, and should it acknowledge a barrier?
 *
 * This is where safety lives (docs/protocol/groups.md, "Safety argument"):
 * - acquire only when the lock is absent (the store's compare makes it atomic);
 * - start only after acquiring; release only after the handler has settled;
 * - stop everything when fenced.
 */
import type { GrantRecord, Protocol, StateRecord } from './keys.js';
import { NO_MUTANTS, type Mutants } from '../mutants.js';

/** The lock of one resource as read from the store. */
export interface HeldView {
  readonly nodeId: string | undefined; // undefined: unreadable record (treated as somebody else's)
  readonly sessionId: string | undefined;
  /** Create revision: the fencing token of its holder. */
  readonly token: number;
}

export interface MemberView {
  readonly state: StateRecord | undefined;
  /** Mod revision of the state key (0 when absent): the global barrier's acquire compares it. */
  readonly stateRevision: number;
  /** My grants: resource → grant. */
  readonly grants: ReadonlyMap<string, GrantRecord>;
  /** Locks of the resources I care about (my grants and my local resources). Absent = free. */
  readonly held: ReadonlyMap<string, HeldView>;
  /** Generation of my current barrier acknowledgement, if any. */
  readonly ackedGeneration: number | undefined;
  /**
   * My grants whose key is present but unreadable (reported as corrupt): what runs under one keeps running (its
   * lock is ours; the coordinator neither overwrites nor moves it meanwhile), but nothing is acquired or restarted
   * on it.
   */
  readonly unreadableGrants?: ReadonlySet<string> | undefined;
}

/** What a member's runtime knows about one resource it deals with. */
export type LocalResource =
  /** The acquire transaction is in flight. */
  | { readonly phase: 'acquiring' }
  /** The handler runs; `generation` is the group generation it started under. */
  | { readonly phase: 'running'; readonly token: number; readonly generation: number }
  /** The handler ended on its own (returned or threw) while still granted; the lock is kept; restart at `restartAtMs`. */
  | { readonly phase: 'backoff'; readonly token: number; readonly generation: number; readonly restartAtMs: number }
  /** The handler was aborted; waiting for it to settle. */
  | { readonly phase: 'stopping'; readonly token: number; readonly sinceMs: number }
  /** The handler has settled; the lock must be released. */
  | { readonly phase: 'stopped'; readonly token: number }
  /** The release transaction is in flight. */
  | { readonly phase: 'releasing'; readonly token: number };

export interface MemberSelf {
  readonly nodeId: string;
  readonly sessionId: string;
  readonly protocol: Protocol;
  /** Past the self-fencing deadline, or the session is not usable: no new work, stop all. */
  readonly fenced: boolean;
  /** Leaving the group: acquire nothing new. */
  readonly leaving: boolean;
  readonly nowMs: number;
}

export type StopReason = 'revoked' | 'barrier' | 'fenced' | 'leaving';

export type MemberAction =
  | {
      readonly type: 'acquire';
      readonly resource: string;
      readonly generation: number;
      /** Global barrier: the acquire succeeds only if the state has not changed since it was read. */
      readonly stateRevision: number | undefined;
      /** The group generation the handler starts under. */
      readonly stateGeneration: number;
    }
  /** The lock is already ours (an acquire whose response was lost): run with its token. */
  | { readonly type: 'adopt'; readonly resource: string; readonly token: number; readonly generation: number }
  | { readonly type: 'stop'; readonly resource: string; readonly reason: StopReason }
  | { readonly type: 'restart'; readonly resource: string; readonly token: number; readonly generation: number }
  | { readonly type: 'release'; readonly resource: string; readonly token: number }
  /** Forget a resource whose lock is already gone (e.g. the session that held it expired). */
  | { readonly type: 'forget'; readonly resource: string }
  | { readonly type: 'ack'; readonly generation: number };

export function decideMember(
  view: MemberView,
  local: ReadonlyMap<string, LocalResource>,
  self: MemberSelf,
  mutants: Mutants = NO_MUTANTS,
): MemberAction[] {
  const actions: MemberAction[] = [];
  const global = self.protocol === 'global-barrier';
  const barrierStopping = global && view.state?.phase === 'stopping';
  const generation = view.state?.generation ?? 0;

  for (const [resource, loc] of local) {
    const granted = view.grants.has(resource) || view.unreadableGrants?.has(resource) === true;
    switch (loc.phase) {
      case 'running':
      case 'backoff': {
        const reason: StopReason | undefined = self.fenced
          ? 'fenced'
          : !granted
            ? self.leaving
              ? 'leaving'
              : 'revoked'
            : barrierStopping || (global && generation > loc.generation)
              ? // Global barrier: every rebalance stops everything, even if this node missed the stop phase.
                'barrier'
              : undefined;
        if (reason !== undefined) actions.push({ type: 'stop', resource, reason });
        else if (loc.phase === 'backoff' && self.nowMs >= loc.restartAtMs) {
          actions.push({ type: 'restart', resource, token: loc.token, generation: loc.generation });
        }
        break;
      }
      case 'stopped': {
        const h = view.held.get(resource);
        const grant = view.grants.get(resource);
        if (h === undefined || h.token !== loc.token) {
          // The lock is gone (our session expired): nothing to release.
          actions.push({ type: 'forget', resource });
        } else if (self.fenced) {
          // Keep the lock until we can trust our session again (or it expires).
        } else if (
          grant !== undefined &&
          !self.leaving &&
          !barrierStopping &&
          mayStart(self.protocol, view.state, grant)
        ) {
          // Stopped only because we were fenced, and it is still ours: resume under the same lock.
          actions.push({ type: 'restart', resource, token: loc.token, generation });
        } else {
          actions.push({ type: 'release', resource, token: loc.token });
        }
        break;
      }
      default:
        break; // acquiring, stopping, releasing: wait for the runtime to report
    }
  }

  // Locks this session holds without knowing it (an acquire whose response was lost): run the resource if
  // it is ours to run, otherwise release the lock — else it would block the resource until our session ends.
  for (const [resource, h] of view.held) {
    if (local.has(resource) || h.nodeId !== self.nodeId || h.sessionId !== self.sessionId || self.fenced) continue;
    const grant = view.grants.get(resource);
    if (grant !== undefined && !self.leaving && !barrierStopping && mayStart(self.protocol, view.state, grant)) {
      actions.push({ type: 'adopt', resource, token: h.token, generation });
    } else {
      actions.push({ type: 'release', resource, token: h.token });
    }
  }

  if (!self.fenced && !self.leaving) {
    for (const [resource, grant] of view.grants) {
      if (local.has(resource)) continue;
      if (!mayStart(self.protocol, view.state, grant)) continue;
      const h = view.held.get(resource);
      if (h === undefined || (mutants.has('acquire-without-lock') && h.nodeId !== self.nodeId)) {
        actions.push({
          type: 'acquire',
          resource,
          generation: grant.generation,
          stateRevision: global ? view.stateRevision : undefined,
          stateGeneration: generation,
        });
      }
      // else: ours (handled above), or someone else's (or an earlier incarnation of this node's) — wait.
    }
  }

  if (barrierStopping && view.state !== undefined && view.ackedGeneration !== view.state.generation) {
    const busy =
      local.size > 0 || [...view.held.values()].some((h) => h.nodeId === self.nodeId && h.sessionId === self.sessionId);
    if (!busy && !self.fenced) actions.push({ type: 'ack', generation: view.state.generation });
  }
  return actions;
}

/** Whether a granted resource may start now under the protocol. */
export function mayStart(protocol: Protocol, state: StateRecord | undefined, grant: GrantRecord): boolean {
  if (protocol === 'resource-barrier') return true;
  return state !== undefined && state.phase === 'running' && grant.generation <= state.generation;
}
