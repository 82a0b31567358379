/**
 * Options of a group member, validated up front by the shared option reader:
 * a mistake (a misspelt name, a wrong type, a value out of range) is reported
 * when the application starts, by name, with what to do — not later in a
 * background loop, and never by silently using a default.
 */
import { OptionReader } from '../../options.js';
import { PLACEMENT_STRATEGIES, type PlacementStrategy } from '../../placement/index.js';
import { PROTOCOLS, type Protocol } from '../../protocol/groups/keys.js';
import { validateName } from '../../protocol/names.js';
import { readMember, type MemberOptions, type ResolvedMemberOptions } from '../common-options.js';

/** Joins that arrive within this long of each other cause one rebalance (docs/groups.md, "Rebalance storms"). */
export const DEFAULT_REBALANCE_DEBOUNCE_MS = 500;

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
 * Runs one resource. Its promise settles when the work has stopped. If it returns because stillOwner() turned
 * false, it is started again (with no delay) as soon as the resource is this node's again. If it returns or
 * throws while the resource is still this node's, it is restarted after a backoff (the resource stays here).
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

export interface JoinGroupOptions extends MemberOptions {
  /** 1–64 of A-Z a-z 0-9 . _ - */
  readonly group: string;
  readonly handler: ResourceHandler;
  /** `resource-barrier` (default): only moving resources stop. `global-barrier`: all stop, reassign, all start. */
  readonly protocol?: Protocol | undefined;
  readonly strategy?: PlacementStrategy | undefined;
  /** How long a stopping handler may take before it is reported stuck (and the global barrier's drain bound; default 30 000 ms). */
  readonly drainTimeoutMs?: number | undefined;
  /** How long leave() waits for this node's resources to move away and its handlers to stop (default 30 000 ms). */
  readonly leaveTimeoutMs?: number | undefined;
  /** What to do when a handler is stuck: keep its lock and keep reporting (`wait`, default) or end the process (`exit`). */
  readonly onStuckHandler?: 'wait' | 'exit' | undefined;
  /**
   * Move running resources (to balance, e.g. onto a node that joined) only after membership and resources have
   * been stable this long (default 500 ms), so that nodes joining together cause one rebalance. Resources nobody
   * runs (a failed node's, new ones) never wait for it.
   */
  readonly rebalanceDebounceMs?: number | undefined;
  /**
   * When every session is lost at once (a store restart or outage past the TTL), the members rejoin one by one. A
   * coordinator that rejoined less than this long ago does not give away the resources of nodes that are not back
   * yet: they take their own resources again when they rejoin, so nothing moves twice. It stops waiting as soon as
   * they are all back, and at the latest this long after its rejoin (default: sessionTtlMs). A first join never
   * waits. 0 turns it off. See docs/groups.md.
   */
  readonly rejoinGracePeriodMs?: number | undefined;
  /** At most one rebalance per this interval (default 0). */
  readonly minRebalanceIntervalMs?: number | undefined;
  /** Static membership: a node that comes back with the same id within the grace period gets its resources back. */
  readonly staticMembership?: { readonly gracePeriodMs: number } | undefined;
  readonly resourceSource?: ResourceSource | undefined;
  /** Restart backoff of a handler that returned or threw while still assigned (default 1 000 → 30 000 ms). */
  readonly restartBackoff?:
    { readonly initialMs?: number | undefined; readonly maxMs?: number | undefined } | undefined;
  /** Injected randomness in [0, 1) for backoff jitter (default Math.random). */
  readonly random?: (() => number) | undefined;
}

export interface ResolvedGroupOptions extends ResolvedMemberOptions {
  readonly group: string;
  readonly handler: ResourceHandler;
  readonly protocol: Protocol;
  readonly strategy: PlacementStrategy;
  readonly drainTimeoutMs: number;
  readonly leaveTimeoutMs: number;
  readonly onStuckHandler: 'wait' | 'exit';
  readonly rebalanceDebounceMs: number;
  readonly rejoinGracePeriodMs: number;
  readonly minRebalanceIntervalMs: number;
  readonly gracePeriodMs: number;
  readonly resourceSource: ResourceSource | undefined;
  readonly resourceSourceIntervalMs: number;
  readonly resourceSourceTimeoutMs: number;
  readonly restartInitialMs: number;
  readonly restartMaxMs: number;
  readonly random: () => number;
}

/** What a wrapper of joinGroup (consumer groups, the sidecar) supplies itself instead of reading it. */
export type SuppliedGroupOptions = Partial<Pick<JoinGroupOptions, 'handler' | 'resourceSource'>>;

/**
 * Read and check joinGroup's options. A wrapper (consumer groups, the sidecar) reads the options it adds from the
 * same reader in `wrapper`, so that one unknown-option check covers them all, and returns what it supplies itself
 * (the handler, a resource source); those are then not read from the options.
 */
export function resolveGroupOptions(
  options: unknown,
  where = 'joinGroup options',
  wrapper?: (r: OptionReader) => SuppliedGroupOptions,
): ResolvedGroupOptions {
  const r = new OptionReader(options, where);
  const supplied = wrapper?.(r) ?? {};
  const member = readMember(r);
  const group = validateName(r.raw('group'), 'group name');
  const handler = supplied.handler ?? r.fn<ResourceHandler>('handler');
  const protocol = r.oneOf('protocol', PROTOCOLS, 'resource-barrier');
  const strategy = r.oneOf('strategy', PLACEMENT_STRATEGIES, 'sticky-balanced');
  const onStuckHandler = r.oneOf('onStuckHandler', ['wait', 'exit'] as const, 'wait');
  const sourceR = supplied.resourceSource === undefined ? r.object('resourceSource') : undefined;
  let resourceSource = supplied.resourceSource;
  let resourceSourceIntervalMs = 30_000;
  let resourceSourceTimeoutMs = 10_000;
  if (sourceR !== undefined) {
    sourceR.fn('list');
    resourceSourceIntervalMs = sourceR.ms('intervalMs', 30_000, { min: 10 });
    resourceSourceTimeoutMs = sourceR.ms('timeoutMs', 10_000, { min: 1 });
    sourceR.done();
    resourceSource = r.raw('resourceSource') as ResourceSource;
  } else if (resourceSource !== undefined) {
    resourceSourceIntervalMs = resourceSource.intervalMs ?? resourceSourceIntervalMs;
    resourceSourceTimeoutMs = resourceSource.timeoutMs ?? resourceSourceTimeoutMs;
  }
  const staticR = r.object('staticMembership');
  const gracePeriodMs = staticR === undefined ? 0 : staticR.ms('gracePeriodMs', 0, { min: 1 });
  staticR?.done();
  const backoffR = r.object('restartBackoff');
  const restartInitialMs = backoffR?.ms('initialMs', 1000, { min: 1 }) ?? 1000;
  const restartMaxMs = backoffR?.ms('maxMs', 30_000, { min: 1 }) ?? 30_000;
  backoffR?.done();
  const drainTimeoutMs = r.ms('drainTimeoutMs', 30_000, { min: 1 });
  const resolved: ResolvedGroupOptions = {
    ...member,
    group,
    handler,
    protocol,
    strategy,
    drainTimeoutMs,
    leaveTimeoutMs: r.ms('leaveTimeoutMs', 30_000, { min: 0 }),
    onStuckHandler,
    rebalanceDebounceMs: r.ms('rebalanceDebounceMs', DEFAULT_REBALANCE_DEBOUNCE_MS),
    rejoinGracePeriodMs: r.ms('rejoinGracePeriodMs', member.sessionTtlMs),
    minRebalanceIntervalMs: r.ms('minRebalanceIntervalMs', 0),
    gracePeriodMs,
    resourceSource,
    resourceSourceIntervalMs,
    resourceSourceTimeoutMs,
    restartInitialMs,
    restartMaxMs,
    random: r.fn<() => number>('random', Math.random),
  };
  r.done();
  return resolved;
}
