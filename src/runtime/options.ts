/**
 * Options of a group member, validated up front: a mistake is reported when
 * the application starts, with what to do, not later in a background loop.
 */
import { InvalidArgumentError } from '../errors.js';
import { PLACEMENT_STRATEGIES, type PlacementStrategy } from '../placement/index.js';
import { PROTOCOLS, validateGroupName, validateNodeId, type Protocol } from '../protocol/groups/keys.js';
import type { Clock, Store } from '../store/contract.js';
import { STORE_LIMITS } from '../store/validate.js';

/** What a handler gets for one assigned resource. */
export interface ResourceContext {
  readonly group: string;
  readonly nodeId: string;
  readonly resource: string;
  /** Grows with every new owner of this resource; pass it to the resource so it can refuse stale owners. */
  readonly fencingToken: number;
  /** Aborted when the resource is revoked, the node self-fences or leaves. Stop promptly. */
  readonly signal: AbortSignal;
  /**
   * Cheap synchronous check to call before each side effect: false once the
   * resource is revoked or this node's lease can no longer be trusted (a
   * monotonic-clock comparison, so it is right even just after a process pause).
   */
  stillOwner(): boolean;
}

/**
 * Runs one resource. Its promise settles when the work has stopped. If it
 * returns or throws while the resource is still assigned, it is restarted
 * after a backoff (the resource stays with this node meanwhile).
 */
export type ResourceHandler = (ctx: ResourceContext) => Promise<void> | void;

export interface ResourceSource {
  /** List the resources that should exist (e.g. the broker's queues). Called by the coordinator only. */
  list(signal: AbortSignal): Promise<Iterable<string>> | Iterable<string>;
  /** How often (default 30 000 ms). */
  readonly intervalMs?: number | undefined;
  /** Give up on one call after this long (default 10 000 ms); a failed call changes nothing. */
  readonly timeoutMs?: number | undefined;
}

export interface JoinOptions {
  readonly store: Store;
  readonly group: string;
  readonly node: {
    readonly id: string;
    /** Failure domain (rack, zone); used by placements that spread. */
    readonly zone?: string | undefined;
    /** Relative capacity (> 0, default 1). */
    readonly weight?: number | undefined;
  };
  readonly handler: ResourceHandler;
  /** `resource-barrier` (default): only moving resources stop. `global-barrier`: all stop, reassign, all start. */
  readonly protocol?: Protocol | undefined;
  readonly strategy?: PlacementStrategy | undefined;
  /** Session TTL: how long after this node dies its resources stay unowned (default 10 000 ms). */
  readonly sessionTtlMs?: number | undefined;
  /**
   * Handlers are aborted this long before the session could expire on the
   * server (default: TTL / 5). It must cover the time a handler needs to stop.
   */
  readonly selfFenceMarginMs?: number | undefined;
  /** How long a stopping handler may take before it is reported stuck, and how long `leave()` waits (default 30 000 ms). */
  readonly drainTimeoutMs?: number | undefined;
  /** What to do when a handler is stuck: keep its lock and keep reporting (`wait`, default) or end the process (`exit`). */
  readonly onStuckHandler?: 'wait' | 'exit' | undefined;
  /** Rebalance only after membership/resources have been stable this long (default 0). */
  readonly rebalanceDebounceMs?: number | undefined;
  /** At most one rebalance per this interval (default 0). */
  readonly minRebalanceIntervalMs?: number | undefined;
  /** Static membership: a node that comes back with the same id within the grace period gets its resources back. */
  readonly staticMembership?: { readonly gracePeriodMs: number } | undefined;
  readonly resourceSource?: ResourceSource | undefined;
  /** Safety net for lost notifications: re-read at least this often (default min(1000, TTL / 4)). */
  readonly reconcileIntervalMs?: number | undefined;
  /** Restart backoff of a handler that returned or threw while still assigned (default 1 000 → 30 000 ms). */
  readonly restartBackoff?:
    { readonly initialMs?: number | undefined; readonly maxMs?: number | undefined } | undefined;
  /** How long to wait for a previous process with the same node id to disappear (default TTL × 1.5 + 1000). */
  readonly joinTimeoutMs?: number | undefined;
  /** Injected clock (default: the store's). */
  readonly clock?: Clock | undefined;
  /** Injected randomness in [0, 1) for backoff jitter (default Math.random). */
  readonly random?: (() => number) | undefined;
}

export interface ResolvedOptions {
  readonly store: Store;
  readonly group: string;
  readonly nodeId: string;
  readonly zone: string;
  readonly weight: number;
  readonly handler: ResourceHandler;
  readonly protocol: Protocol;
  readonly strategy: PlacementStrategy;
  readonly sessionTtlMs: number;
  readonly selfFenceMarginMs: number;
  readonly drainTimeoutMs: number;
  readonly onStuckHandler: 'wait' | 'exit';
  readonly rebalanceDebounceMs: number;
  readonly minRebalanceIntervalMs: number;
  readonly gracePeriodMs: number;
  readonly resourceSource: ResourceSource | undefined;
  readonly resourceSourceIntervalMs: number;
  readonly resourceSourceTimeoutMs: number;
  readonly reconcileIntervalMs: number;
  readonly restartInitialMs: number;
  readonly restartMaxMs: number;
  readonly joinTimeoutMs: number;
  readonly clock: Clock;
  readonly random: () => number;
}

function ms(name: string, v: number | undefined, fallback: number, min = 0, max = 86_400_000): number {
  const x = v ?? fallback;
  if (typeof x !== 'number' || !Number.isFinite(x) || x < min || x > max) {
    throw new InvalidArgumentError(
      `${name} must be a number of milliseconds between ${min} and ${max}, got ${String(x)}`,
    );
  }
  return x;
}

export function resolveOptions(o: JoinOptions): ResolvedOptions {
  if (o === null || typeof o !== 'object') throw new InvalidArgumentError('joinGroup needs an options object');
  const store = o.store;
  if (store === null || typeof store !== 'object' || typeof store.txn !== 'function') {
    throw new InvalidArgumentError('options.store must be a Store (see openStore(url) or a backend module)');
  }
  const group = validateGroupName(o.group);
  if (o.node === null || typeof o.node !== 'object')
    throw new InvalidArgumentError('options.node must be { id, zone?, weight? }');
  const nodeId = validateNodeId(o.node.id);
  const zone = o.node.zone ?? '';
  if (typeof zone !== 'string' || zone.length > 64)
    throw new InvalidArgumentError('node.zone must be a string of at most 64 characters');
  const weight = o.node.weight ?? 1;
  if (typeof weight !== 'number' || !Number.isFinite(weight) || weight <= 0 || weight > 1_000_000) {
    throw new InvalidArgumentError(`node.weight must be a number > 0 (and <= 1e6), got ${String(weight)}`);
  }
  if (typeof o.handler !== 'function')
    throw new InvalidArgumentError('options.handler must be a function (ctx) => Promise<void>');
  const protocol = o.protocol ?? 'resource-barrier';
  if (!PROTOCOLS.includes(protocol)) {
    throw new InvalidArgumentError(`protocol must be one of ${PROTOCOLS.join(', ')}, got ${JSON.stringify(protocol)}`);
  }
  const strategy = o.strategy ?? 'sticky-balanced';
  if (!PLACEMENT_STRATEGIES.includes(strategy)) {
    throw new InvalidArgumentError(
      `strategy must be one of ${PLACEMENT_STRATEGIES.join(', ')}, got ${JSON.stringify(strategy)}`,
    );
  }
  const sessionTtlMs = ms(
    'sessionTtlMs',
    o.sessionTtlMs,
    10_000,
    STORE_LIMITS.minSessionTtlMs,
    STORE_LIMITS.maxSessionTtlMs,
  );
  const selfFenceMarginMs = ms('selfFenceMarginMs', o.selfFenceMarginMs, Math.floor(sessionTtlMs / 5), 0);
  // Keep-alives go out every TTL/3, so in normal operation the deadline is at
  // least ~2/3 TTL away; a margin above half the TTL would fence healthy nodes.
  if (selfFenceMarginMs > sessionTtlMs / 2) {
    throw new InvalidArgumentError(
      `selfFenceMarginMs (${selfFenceMarginMs}) must be at most half of sessionTtlMs (${sessionTtlMs}); raise the TTL instead`,
    );
  }
  const onStuckHandler = o.onStuckHandler ?? 'wait';
  if (onStuckHandler !== 'wait' && onStuckHandler !== 'exit') {
    throw new InvalidArgumentError(`onStuckHandler must be 'wait' or 'exit', got ${JSON.stringify(onStuckHandler)}`);
  }
  const source = o.resourceSource;
  if (source !== undefined && (source === null || typeof source.list !== 'function')) {
    throw new InvalidArgumentError(
      'resourceSource must be { list(signal): Promise<Iterable<string>>, intervalMs?, timeoutMs? }',
    );
  }
  const random = o.random ?? Math.random;
  if (typeof random !== 'function') throw new InvalidArgumentError('random must be a function returning [0, 1)');
  const gracePeriodMs =
    o.staticMembership === undefined ? 0 : ms('staticMembership.gracePeriodMs', o.staticMembership.gracePeriodMs, 0, 1);
  return {
    store,
    group,
    nodeId,
    zone,
    weight,
    handler: o.handler,
    protocol,
    strategy,
    sessionTtlMs,
    selfFenceMarginMs,
    drainTimeoutMs: ms('drainTimeoutMs', o.drainTimeoutMs, 30_000, 1),
    onStuckHandler,
    rebalanceDebounceMs: ms('rebalanceDebounceMs', o.rebalanceDebounceMs, 0),
    minRebalanceIntervalMs: ms('minRebalanceIntervalMs', o.minRebalanceIntervalMs, 0),
    gracePeriodMs,
    resourceSource: source,
    resourceSourceIntervalMs: ms('resourceSource.intervalMs', source?.intervalMs, 30_000, 10),
    resourceSourceTimeoutMs: ms('resourceSource.timeoutMs', source?.timeoutMs, 10_000, 1),
    reconcileIntervalMs: ms('reconcileIntervalMs', o.reconcileIntervalMs, Math.min(1000, sessionTtlMs / 4), 10),
    restartInitialMs: ms('restartBackoff.initialMs', o.restartBackoff?.initialMs, 1000, 1),
    restartMaxMs: ms('restartBackoff.maxMs', o.restartBackoff?.maxMs, 30_000, 1),
    joinTimeoutMs: ms('joinTimeoutMs', o.joinTimeoutMs, sessionTtlMs * 1.5 + 1000, 0),
    clock: o.clock ?? store.clock,
    random,
  };
}
