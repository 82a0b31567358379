/**
 * One node's place in a fleet's control plane: its node record (attached to its session, so it vanishes when the
 * node dies), the coordinator campaign, and the coordinator loop while it leads. All three come from the one
 * lease/membership/election module (../membership.ts), the same as resource groups and slots; this file only wires
 * the fleet's keys and records into it and hosts a FleetCoordinator while elected.
 *
 * This is the control-plane half of `joinFleet` (issue 14). The Raft half plugs in here: a future FleetNode owns a
 * FleetControl, and on every kick (a watch hint on `desired/`, the tick) starts or stops the Raft groups whose
 * desired record names this node, each group's leader stepping toward its desired members with `nextStep`
 * (src/protocol/fleet/plan.ts) and reporting with `reportObserved`. Nothing here depends on that half.
 */
import { CorruptDataError, InvalidArgumentError, SessionExpiredError } from '../../errors.js';
import { TypedEmitter, type ErrorEvent } from '../../events.js';
import { OptionReader } from '../../options.js';
import { registerNode } from '../../protocol/fleet/io.js';
import { decodeNode, encodeRecord, FleetKeys, type NodeRecord } from '../../protocol/fleet/keys.js';
import { NO_MUTANTS, type Mutants } from '../../protocol/mutants.js';
import type { Store } from '../../store/contract.js';
import {
  readMember,
  type MemberOptions,
  type ResolvedMemberOptions,
  type RuntimeInternals,
} from '../common-options.js';
import { Membership } from '../membership.js';
import { FleetCoordinator } from './coordinator.js';

/** Default: a node whose session ended keeps its place this long (a fast restart moves nothing). Seconds, not minutes. */
export const DEFAULT_FLEET_GRACE_PERIOD_MS = 5000;
/** Default: desired records written per coordinator round at most (about 12 transactions of 42 entries). */
export const DEFAULT_MAX_DESIRED_WRITES_PER_ROUND = 500;

export interface FleetControlOptions extends MemberOptions {
  /** The fleet's name (1–64 of A-Z a-z 0-9 . _ -). */
  readonly fleet: string;
  /** Chosen by this process when it starts (e.g. its data directory's incarnation), 1–128 characters. */
  readonly incarnation: string;
  /** How long a node whose session ended keeps its members before they are placed elsewhere (default 5000 ms). */
  readonly gracePeriodMs?: number | undefined;
  /**
   * Desired records the coordinator writes per round at most (default 500; first placements of new groups: four times
   * as many); the rest in the next rounds.
   */
  readonly maxDesiredWritesPerRound?: number | undefined;
  /**
   * New groups are placed only once this many nodes are active (default 1). Set it to the number of nodes you
   * start together, so the first node elected does not take every group and hand them on a moment later.
   */
  readonly minNodes?: number | undefined;
}

export interface ResolvedFleetControlOptions extends ResolvedMemberOptions {
  readonly fleet: string;
  readonly incarnation: string;
  readonly address: string;
  readonly gracePeriodMs: number;
  readonly maxDesiredWritesPerRound: number;
  readonly minNodes: number;
  /** The state machines this node runs, published in its node record (placement); absent: not said (all). */
  readonly machines?: readonly string[] | undefined;
}

export function resolveFleetControlOptions(options: FleetControlOptions): ResolvedFleetControlOptions {
  const r = new OptionReader(options, 'fleet options');
  const resolved = readFleetControl(r, r.required<string>('incarnation', checkIncarnation));
  r.done();
  return resolved;
}

function checkIncarnation(v: unknown): string | undefined {
  return typeof v === 'string' && v.length > 0 && v.length <= 128 ? undefined : 'must be a string of 1-128 characters';
}

/**
 * Read the control-plane options from `r` (joinFleet reads its own from the same reader, then calls `r.done()`).
 * `incarnation` comes from the caller: joinFleet takes it from its Raft data directory.
 */
export function readFleetControl(r: OptionReader, incarnation: string): ResolvedFleetControlOptions {
  const member = readMember(r);
  const fleet = new FleetKeys(
    r.required<string>('fleet', (v) => (typeof v === 'string' ? undefined : 'must be a string')),
  ).fleet;
  const bad = checkIncarnation(incarnation);
  if (bad !== undefined) throw new InvalidArgumentError(`fleet options: incarnation ${bad}`);
  const gracePeriodMs = r.ms('gracePeriodMs', DEFAULT_FLEET_GRACE_PERIOD_MS, { min: 0, max: 3_600_000 });
  const maxDesiredWritesPerRound = r.integer('maxDesiredWritesPerRound', DEFAULT_MAX_DESIRED_WRITES_PER_ROUND, {
    min: 1,
    max: 100_000,
  });
  const minNodes = r.integer('minNodes', 1, { min: 1, max: 10_000 });
  const address = member.node.address;
  if (address === undefined || address.length === 0) {
    throw new InvalidArgumentError(
      'fleet options: node.address is required: where the Raft transport of this node listens (host:port)',
    );
  }
  return { ...member, fleet, incarnation, address, gracePeriodMs, maxDesiredWritesPerRound, minNodes };
}

export interface FleetControlEvents {
  joined: { readonly nodeId: string; readonly sessionId: string };
  coordinatorElected: { readonly nodeId: string; readonly token: number };
  coordinatorLost: { readonly token: number };
  /** The coordinator wrote desired placements; `pending` more wait for its next rounds. */
  placed: { readonly written: number; readonly pending: number };
  sessionLost: { readonly sessionId: string; readonly cause: unknown };
  error: ErrorEvent;
  left: Record<string, never>;
}

/** Register this node in the fleet and take part in the coordinator election. Resolves once registered. */
export async function startFleetControl(
  options: FleetControlOptions,
  internals: RuntimeInternals = {},
): Promise<FleetControl> {
  const c = new FleetControl(resolveFleetControlOptions(options), internals);
  await c.start();
  return c;
}

export class FleetControl extends TypedEmitter<FleetControlEvents> {
  readonly nodeId: string;
  readonly keys: FleetKeys;
  readonly #o: ResolvedFleetControlOptions;
  readonly #store: Store;
  readonly #mutants: Mutants;
  readonly #membership: Membership;
  #coordinator: FleetCoordinator | undefined;
  #record: NodeRecord;

  /** Use startFleetControl(). */
  constructor(options: ResolvedFleetControlOptions, internals: RuntimeInternals = {}) {
    super({ held: true });
    this.#o = options;
    this.#store = options.store;
    this.#mutants = internals.mutants ?? NO_MUTANTS;
    this.nodeId = options.node.id;
    this.keys = new FleetKeys(options.fleet);
    this.#record = {
      id: options.node.id,
      zone: options.node.zone,
      weight: options.node.weight,
      address: options.address,
      state: 'active',
      incarnation: options.incarnation,
      ...(options.machines !== undefined ? { machines: [...options.machines].sort() } : {}),
    };
    this.#membership = new Membership(
      {
        store: options.store,
        clock: options.clock,
        scope: `fleet ${options.fleet}`,
        nodeId: options.node.id,
        memberKey: this.keys.node(options.node.id),
        electionPrefix: this.keys.coordinator,
        electionValue: encodeRecord({ nodeId: options.node.id }),
        sessionTtlMs: options.sessionTtlMs,
        selfFenceMarginMs: options.selfFenceMarginMs,
        reconcileIntervalMs: options.reconcileIntervalMs,
        joinTimeoutMs: options.joinTimeoutMs,
        selfFencing: !this.#mutants.has('no-self-fencing'),
        // The node record (keys.ts), attached to the session by the membership module.
        // After a rejoin the record says what it said last (a draining node stays draining).
        record: () => ({ value: encodeRecord(this.#record) }),
        checkOrphanRecord: (kv) => {
          let what = 'holds a node record attached to no session, which no node writes';
          try {
            decodeNode(this.keys, kv.key, kv.value);
          } catch (cause) {
            if (!(cause instanceof CorruptDataError)) throw cause;
            what = 'holds data Rebalancer did not write';
          }
          throw new CorruptDataError(`${kv.key} ${what}; nothing overwrites it: look at it, then delete it`, {
            key: kv.key,
            expected: 'a node record attached to the session of the node that registered it',
          });
        },
      },
      {
        joined: (session) => this.emit('joined', { nodeId: this.nodeId, sessionId: session.id }),
        fenced: () => undefined, // the coordinator checks ownsNow() before each round; nothing else runs here yet
        unfenced: () => this.#coordinator?.kick(),
        sessionLost: (session, cause) => {
          // The election key went with the session: leadershipLost follows and stops the coordinator.
          this.emit('sessionLost', { sessionId: session.id, cause });
        },
        elected: async (leadership) => {
          const c = new FleetCoordinator({
            store: this.#store,
            keys: this.keys,
            clock: options.clock,
            leadership,
            settings: {
              gracePeriodMs: options.gracePeriodMs,
              maxWritesPerRound: options.maxDesiredWritesPerRound,
              minNodes: options.minNodes,
            },
            ownsNow: () => this.#membership.ownsNow(),
            onDeposed: () => this.#membership.leadershipLost(leadership),
            events: {
              placed: (written, pending) => this.emit('placed', { written, pending }),
              error: (error, context) => this.reportError(error, context),
            },
            mutants: this.#mutants,
          });
          this.#coordinator = c;
          this.emit('coordinatorElected', { nodeId: this.nodeId, token: leadership.token });
          await c.start();
        },
        leadershipLost: (leadership) => {
          const c = this.#coordinator;
          if (c === undefined || c.token !== leadership.token) return;
          this.#coordinator = undefined;
          void c.stop();
          this.emit('coordinatorLost', { token: leadership.token });
        },
        kick: () => this.#coordinator?.kick(),
        tick: () => this.#coordinator?.tick(),
        error: (error, context) => this.reportError(error, context),
        idTaken: () => void this.close().catch(() => undefined),
      },
    );
  }

  /** The coordinator loop while this node leads, else undefined. */
  get coordinator(): FleetCoordinator | undefined {
    return this.#coordinator;
  }

  get isCoordinator(): boolean {
    return this.#coordinator !== undefined;
  }

  get sessionId(): string | undefined {
    return this.#membership.session?.id;
  }

  /** Use startFleetControl(), which calls this. Events are held until the caller has the object. */
  async start(): Promise<void> {
    await this.#membership.join();
    this.#o.clock.setTimeout(() => this.openEvents(), 0);
  }

  /**
   * Say this node drains: its record turns `deactivating` (on the same session), so the coordinator places no
   * desired member on it any more and its groups move elsewhere at once; when it then leaves, no grace period holds
   * anything for it. Waiting until its replicas have moved is the fleet node's job (the Raft half).
   */
  async markDeactivating(): Promise<void> {
    const session = this.#membership.session;
    if (session === undefined || !this.#membership.active) {
      throw new InvalidArgumentError(`fleet ${this.#o.fleet}: node ${this.nodeId} is not registered; nothing to drain`);
    }
    this.#record = { ...this.#record, state: 'deactivating' };
    try {
      await registerNode(this.#store, this.keys, session, this.#record);
    } catch (error) {
      // The session ended under the write (a pause past its TTL): the membership rejoins on a new session with the
      // record as it is now, which says deactivating — the drain goes on from there; failing it would leave a node
      // half-drained for the caller to retry.
      if (!(error instanceof SessionExpiredError)) throw error;
    }
  }

  /**
   * Leave at once: resign, close the session (the node record goes with it; the coordinator places this node's
   * members elsewhere after the grace period). Draining first (`deactivate`) is the fleet node's job, not this one's.
   */
  async close(): Promise<void> {
    if (this.#membership.state === 'left') return;
    await this.#coordinator?.stop();
    await this.#membership.close();
    this.emit('left', {});
  }
}
