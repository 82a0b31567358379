/**
 * The options every runtime shares — the store, the node's identity and the
 * lease settings — read by one piece of code, so that `joinGroup`,
 * `joinSlots` (and `joinFleet`) accept and refuse exactly the same things.
 */
import { InvalidArgumentError } from '../errors.js';
import type { OptionReader } from '../options.js';
import { validateNodeId } from '../protocol/names.js';
import type { Mutants } from '../protocol/mutants.js';
import type { Clock, Store } from '../store/contract.js';
import { STORE_LIMITS, utf8Length } from '../store/validate.js';

/** Who this process is, the same for every runtime. */
export interface NodeOptions {
  /** Unique among the live nodes: a hostname or pod name. 1–128 of A-Z a-z 0-9 . _ : @ - */
  readonly id: string;
  /** Failure domain (rack, availability zone): placements spread replicas over zones. */
  readonly zone?: string | undefined;
  /** Relative capacity (> 0, default 1). */
  readonly weight?: number | undefined;
  /** Where clients reach this node (host:port, URL), for routing tables. */
  readonly address?: string | undefined;
}

export interface NodeIdentity {
  readonly id: string;
  readonly zone: string;
  readonly weight: number;
  readonly address: string | undefined;
}

/** Lease settings, the same for every runtime. */
export interface LeaseOptions {
  /** Session TTL: how long after this node dies its work stays unowned (default 10 000 ms). */
  readonly sessionTtlMs?: number | undefined;
  /**
   * Work stops this long before the session could expire on the server (default TTL / 5, at most TTL / 2). It
   * must cover the time the application needs to stop.
   */
  readonly selfFenceMarginMs?: number | undefined;
  /** Safety net for lost notifications: re-read at least this often (default min(1000, TTL / 4)). */
  readonly reconcileIntervalMs?: number | undefined;
  /** How long to wait for a previous process with the same node id to go away (default TTL × 1.5 + 1000). */
  readonly joinTimeoutMs?: number | undefined;
  /** Injected clock (default: the store's). */
  readonly clock?: Clock | undefined;
}

export interface LeaseSettings {
  readonly sessionTtlMs: number;
  readonly selfFenceMarginMs: number;
  readonly reconcileIntervalMs: number;
  readonly joinTimeoutMs: number;
  readonly clock: Clock;
}

/** What every join…() takes: the store, this node, the lease. */
export interface MemberOptions extends LeaseOptions {
  readonly store: Store;
  readonly node: NodeOptions;
}

export interface ResolvedMemberOptions extends LeaseSettings {
  readonly store: Store;
  readonly node: NodeIdentity;
}

/** Read the options every runtime shares (the caller reads its own, then calls `r.done()`). */
export function readMember(r: OptionReader): ResolvedMemberOptions {
  const store = readStore(r);
  const node = readNode(r);
  return { store, node, ...readLease(r, store) };
}

/** Knobs only the simulator and the tests use; not part of any public options type. */
export interface RuntimeInternals {
  /** Deliberately broken variants to switch on (see src/protocol/mutants.ts). */
  readonly mutants?: Mutants | undefined;
}

export const MAX_ADDRESS_BYTES = 512;

export function readStore(r: OptionReader): Store {
  return r.required<Store>('store', (v) =>
    v !== null &&
    typeof v === 'object' &&
    typeof (v as Store).txn === 'function' &&
    typeof (v as Store).openSession === 'function'
      ? undefined
      : 'must be a Store (from openStore(url) or a backend module such as rebalancer/sqlite)',
  );
}

export function readNode(r: OptionReader): NodeIdentity {
  const n = r.object('node', true);
  const id = validateNodeId(n.raw('id'));
  const zone = n.string('zone', '', 64);
  const weight = n.number('weight', 1, { min: Number.MIN_VALUE, max: 1_000_000 });
  const address = n.string('address', undefined, MAX_ADDRESS_BYTES);
  if (address !== undefined && utf8Length(address) > MAX_ADDRESS_BYTES) {
    throw new InvalidArgumentError(`node.address is above ${MAX_ADDRESS_BYTES} UTF-8 bytes`);
  }
  n.done();
  return { id, zone, weight, address };
}

export function readLease(r: OptionReader, store: Store): LeaseSettings {
  const maxTtlMs = store.limits?.maxSessionTtlMs ?? STORE_LIMITS.maxSessionTtlMs;
  if (r.has('sessionTtlMs') && (r.raw('sessionTtlMs') as number) > maxTtlMs) {
    throw new InvalidArgumentError(
      `sessionTtlMs ${String(r.raw('sessionTtlMs'))} is above the store's maxSessionTtlMs (${maxTtlMs}); raise ` +
        'maxSessionTtlMs in the store options of every client of the namespace, or use a shorter TTL',
    );
  }
  const sessionTtlMs = r.ms('sessionTtlMs', Math.min(10_000, maxTtlMs), {
    min: STORE_LIMITS.minSessionTtlMs,
    max: maxTtlMs,
  });
  const selfFenceMarginMs = r.ms('selfFenceMarginMs', Math.floor(sessionTtlMs / 5), { min: 1 });
  // Keep-alives go out every TTL/5, so in normal operation the deadline is at least ~4/5 TTL away; a margin above
  // half the TTL would fence healthy nodes.
  if (selfFenceMarginMs > sessionTtlMs / 2) {
    throw new InvalidArgumentError(
      `selfFenceMarginMs (${selfFenceMarginMs}) must be at most half of sessionTtlMs (${sessionTtlMs}); raise the TTL instead`,
    );
  }
  const reconcileIntervalMs = r.ms('reconcileIntervalMs', Math.min(1000, sessionTtlMs / 4), {
    min: 10,
    max: 60_000,
  });
  const joinTimeoutMs = r.ms('joinTimeoutMs', sessionTtlMs * 1.5 + 1000);
  const clock =
    r.optional<Clock>('clock', (v) =>
      typeof v === 'object' &&
      v !== null &&
      typeof (v as Clock).now === 'function' &&
      typeof (v as Clock).setTimeout === 'function'
        ? undefined
        : 'must be a Clock ({ now, setTimeout, clearTimeout })',
    ) ?? store.clock;
  return { sessionTtlMs, selfFenceMarginMs, reconcileIntervalMs, joinTimeoutMs, clock };
}
