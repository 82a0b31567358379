/**
 * The coordinator's decisions, sans IO: given what it read from the store, its
 * own small memory and the time, what should it write? The runtime does the
 * reading, the guarded writing and the waking up.
 *
 * Safety never depends on this code (see docs/protocol/groups.md): grants only
 * say who *should* hold a lock next. So a bug here costs balance or liveness,
 * never double ownership; the simulator checks both.
 */
import { place, type PlacementNode, type PlacementStrategy } from '../../placement/index.js';
import type { MemberRecord, Protocol, StateRecord } from './keys.js';

export interface CoordinatorView {
  /** Live members (decodable `members/` keys). */
  readonly members: ReadonlyMap<string, MemberRecord>;
  /** Registered resource names. */
  readonly resources: readonly string[];
  /** resource → every node holding a grant for it (normally exactly one). */
  readonly grants: ReadonlyMap<string, readonly string[]>;
  /** resource → node holding its lock (`held/`); `?` when the lock's record is unreadable. */
  readonly held: ReadonlyMap<string, string>;
  /** node → generation it acknowledged (global barrier). */
  readonly acks: ReadonlyMap<string, number>;
  readonly state: StateRecord | undefined;
  /** Highest generation seen anywhere (state, grants), so generations never go back even if `state` is lost. */
  readonly maxGeneration: number;
  /**
   * Versions of `resources` and `grants` as the reader counts them (same version, same contents). When
   * given, placement is not recomputed for a view whose nodes, resources and grants are unchanged.
   */
  readonly versions?: { readonly resources: number; readonly grants: number } | undefined;
  /**
   * Keys the coordinator writes (the state, grants) that are present but could not be read (not Rebalancer's
   * record, or not readable from the store at all). The coordinator never overwrites what it could not read: while
   * any is listed it decides nothing (docs/protocol/groups.md, "Corrupt data").
   */
  readonly unreadable?: readonly string[] | undefined;
  /**
   * Mod revision of the `state` key in this view (0: absent). The coordinator's writes compare it, so a state that
   * changed after the read — junk written meanwhile — is never overwritten by a decision made without it.
   */
  readonly stateRevision?: number | undefined;
}

export interface CoordinatorConfig {
  readonly protocol: Protocol;
  readonly strategy: PlacementStrategy;
  /** Static membership: how long a departed static member keeps its grants. 0 = off. */
  readonly gracePeriodMs: number;
  /** Global barrier: how long to wait for everyone to stop before proceeding anyway. */
  readonly drainTimeoutMs: number;
  /**
   * Wait until membership and resources have been stable this long before moving running resources (balance).
   * Resources that nobody live holds a grant for (a node failed, a resource was added) never wait for it.
   */
  readonly rebalanceDebounceMs: number;
  /**
   * A coordinator that rejoined less than this long ago after losing its session (every session lost at once: a
   * store restart or outage past the TTL) leaves the grants of nodes that are not members (yet) where they are,
   * until they are all back or this long after its rejoin has passed: the nodes that held them lost their sessions
   * too and take their own resources again when they rejoin, so nothing moves twice (docs/groups.md, "Rebalance
   * storms"). 0: off. Optional: absent = 0.
   */
  readonly rejoinGracePeriodMs?: number | undefined;
  /** Never start two rebalances closer together than this. */
  readonly minRebalanceIntervalMs: number;
}

/**
 * What the coordinator remembers between decisions (lost on failover; that only delays). A decision never
 * changes the memory it is given: it returns the next one (`CoordinatorDecision.memory`).
 */
export interface CoordinatorMemory {
  /** Static members that disappeared, with when and what they were. */
  readonly departed: ReadonlyMap<string, { readonly atMs: number; readonly record: MemberRecord }>;
  /** Members seen in the previous view. */
  readonly previousMembers: ReadonlyMap<string, MemberRecord> | undefined;
  /** Fingerprint of the membership and resource set, and when it last changed. */
  readonly fingerprint: string | undefined;
  readonly changedAtMs: number;
  readonly lastRebalanceAtMs: number;
  /** Global barrier: when the current stop phase began (by this coordinator's clock). */
  readonly stoppingSinceMs: number | undefined;
  /** Hash of the resource names by resources version (see CoordinatorView.versions). */
  readonly resourceHash?: { readonly version: number; readonly hash: string } | undefined;
  /** The last placement and what it was computed from. */
  readonly lastPlacement?: { readonly key: string; readonly target: ReadonlyMap<string, string> } | undefined;
}

/** The decision's own working copy of the memory (the caller's is never changed). */
type WorkingMemory = {
  -readonly [K in keyof CoordinatorMemory]: CoordinatorMemory[K];
} & { departed: Map<string, { readonly atMs: number; readonly record: MemberRecord }> };

export function newCoordinatorMemory(): CoordinatorMemory {
  return {
    departed: new Map(),
    previousMembers: undefined,
    fingerprint: undefined,
    changedAtMs: Number.NEGATIVE_INFINITY,
    lastRebalanceAtMs: Number.NEGATIVE_INFINITY,
    stoppingSinceMs: undefined,
  };
}

export interface GrantRef {
  readonly nodeId: string;
  readonly name: string;
}

export interface CoordinatorDecision {
  /** Grants to delete and to put, paired per moved resource (delete and put of one resource in one transaction). */
  readonly changes: readonly { readonly remove?: GrantRef | undefined; readonly add?: GrantRef | undefined }[];
  /** New state to write, if it changes. */
  readonly state: StateRecord | undefined;
  /** Wake up again at this time (debounce, grace expiry, drain timeout), if nothing else happens first. */
  readonly wakeAtMs: number | undefined;
  /** The target assignment this decision works towards (resource → node). */
  readonly target: ReadonlyMap<string, string>;
  /** True when every target resource is held by its target node and nothing is being changed. */
  readonly settled: boolean;
  /** Moves in this decision (a resource that changes owner). */
  readonly moves: number;
  /** Global barrier: what the stop phase is waiting for. */
  readonly waitingFor?: { readonly acks: readonly string[]; readonly held: readonly string[] } | undefined;
  /**
   * The coordinator stopped coordinating: these keys it would write could not be read (CoordinatorView.unreadable).
   * Nothing is written until they are repaired (deleted, or rewritten as Rebalancer's records).
   */
  readonly halted?: readonly string[] | undefined;
  /** The memory to pass to the next decision. */
  readonly memory: CoordinatorMemory;
}

/** Who decides: the coordinator's node, its fencing token and when it (re)joined with its current session. */
export interface CoordinatorSelf {
  readonly nodeId: string;
  readonly token: number;
  /**
   * When this node registered again after losing its session (its clock); undefined after a first join, which
   * never waits (a crash soon after a process started must fail over as fast as any other).
   */
  readonly rejoinedAtMs?: number | undefined;
}

export function decideCoordinator(
  view: CoordinatorView,
  config: CoordinatorConfig,
  previous: CoordinatorMemory,
  nowMs: number,
  self: CoordinatorSelf,
): CoordinatorDecision {
  const memory: WorkingMemory = { ...previous, departed: new Map(previous.departed) };
  if (view.unreadable !== undefined && view.unreadable.length > 0) {
    // Never overwrite what could not be read: no grant, no state. The members keep what they hold (their locks
    // carry safety). The memory is kept as it was.
    return {
      changes: [],
      state: undefined,
      wakeAtMs: undefined,
      target: new Map(),
      settled: false,
      moves: 0,
      halted: [...view.unreadable].sort(),
      memory,
    };
  }
  const decision = decide(view, config, memory, nowMs, self);
  return { ...decision, memory };
}

function decide(
  view: CoordinatorView,
  config: CoordinatorConfig,
  memory: WorkingMemory,
  nowMs: number,
  self: CoordinatorSelf,
): Omit<CoordinatorDecision, 'memory'> {
  trackDepartures(view, config, memory, nowMs);
  const nodes = effectiveNodes(view, config, memory, nowMs);
  const currentOwner = new Map<string, string>();
  for (const [r, owners] of view.grants) if (owners.length > 0) currentOwner.set(r, owners[0]!);

  // The fingerprint covers what placement depends on; a change restarts the debounce.
  const v = view.versions;
  let resourceHash: string;
  if (v !== undefined && memory.resourceHash?.version === v.resources) resourceHash = memory.resourceHash.hash;
  else {
    resourceHash = hashResources(view.resources);
    memory.resourceHash = v === undefined ? undefined : { version: v.resources, hash: resourceHash };
  }
  const fp = fingerprint(nodes, resourceHash);
  if (fp !== memory.fingerprint) {
    memory.fingerprint = fp;
    memory.changedAtMs = nowMs;
  }

  // Placement is a pure function of nodes, resources and current grants: reuse it when none changed.
  const placementKey = v === undefined ? undefined : `${config.strategy}#${fp}#${v.grants}`;
  let target: ReadonlyMap<string, string>;
  if (placementKey !== undefined && memory.lastPlacement?.key === placementKey) target = memory.lastPlacement.target;
  else {
    target = place(config.strategy, { nodes, resources: view.resources, current: currentOwner });
    memory.lastPlacement = placementKey === undefined ? undefined : { key: placementKey, target };
  }
  const changes = diff(view.grants, target);
  const moves = changes.filter((c) => c.remove !== undefined && c.add !== undefined).length;
  const generation = Math.max(view.maxGeneration, view.state?.generation ?? 0);
  const stateNow = (phase: 'running' | 'stopping', gen: number): StateRecord => ({
    generation: gen,
    protocol: config.protocol,
    phase,
    coordinator: self.nodeId,
    token: self.token,
  });
  const needsClaim =
    view.state === undefined || view.state.token !== self.token || view.state.protocol !== config.protocol;
  const grace = nextGraceExpiry(memory, config, nowMs);

  // Debounce and rate limit: hold back changes, but say when to look again. Work nobody runs (a failed node's,
  // a new resource) does not wait for the debounce — only balance does — except just after this coordinator
  // rejoined, while nodes that hold grants are not back yet: a storm after a store restart (see CoordinatorConfig).
  // (Computed only when there is something to change: it looks at every resource.)
  const readyAt = (): number => {
    const { orphans, awaited } = orphanedWork(view, nodes);
    const delayUntil = (self.rejoinedAtMs ?? Number.NEGATIVE_INFINITY) + (config.rejoinGracePeriodMs ?? 0);
    const hold =
      awaited && nowMs < delayUntil
        ? delayUntil
        : orphans
          ? Number.NEGATIVE_INFINITY
          : memory.changedAtMs + config.rebalanceDebounceMs;
    return Math.max(hold, memory.lastRebalanceAtMs + config.minRebalanceIntervalMs);
  };
  const held = (r: string, n: string): boolean => view.held.get(r) === n;
  const settledTarget = changes.length === 0 && [...target].every(([r, n]) => held(r, n));

  if (config.protocol === 'resource-barrier' || view.state?.phase !== 'stopping') {
    if (changes.length === 0) {
      // Nothing to move. Claim the state (so it names this coordinator and protocol) if needed.
      return {
        changes: [],
        state: needsClaim || view.state?.phase === 'stopping' ? stateNow('running', generation) : undefined,
        wakeAtMs: grace,
        target,
        settled: settledTarget,
        moves: 0,
      };
    }
    const at = readyAt();
    if (nowMs < at) {
      return {
        changes: [],
        state: needsClaim ? stateNow(view.state?.phase ?? 'running', generation) : undefined,
        wakeAtMs: min(at, grace),
        target,
        settled: false,
        moves: 0,
      };
    }
    memory.lastRebalanceAtMs = nowMs;
    if (config.protocol === 'resource-barrier') {
      return { changes, state: stateNow('running', generation + 1), wakeAtMs: grace, target, settled: false, moves };
    }
    // Global barrier: first everybody stops.
    memory.stoppingSinceMs = nowMs;
    return {
      changes: [],
      state: stateNow('stopping', generation + 1),
      wakeAtMs: min(nowMs + config.drainTimeoutMs, grace),
      target,
      settled: false,
      moves: 0,
    };
  }

  // Global barrier, stop phase: proceed when every live member has acknowledged
  // and every lock is released — or the drain timeout passed (locks still
  // protect: a resource whose lock is held simply waits for it).
  memory.stoppingSinceMs ??= nowMs;
  const gen = view.state.generation;
  const missingAcks = [...view.members.keys()].filter((id) => (view.acks.get(id) ?? -1) < gen).sort();
  const stillHeld = [...view.held.keys()].sort();
  const drained = missingAcks.length === 0 && stillHeld.length === 0;
  const timedOut = nowMs >= memory.stoppingSinceMs + config.drainTimeoutMs;
  if (!drained && !timedOut) {
    return {
      changes: [],
      state: needsClaim ? stateNow('stopping', gen) : undefined,
      wakeAtMs: min(memory.stoppingSinceMs + config.drainTimeoutMs, grace),
      target,
      settled: false,
      moves: 0,
      waitingFor: { acks: missingAcks, held: stillHeld },
    };
  }
  memory.stoppingSinceMs = undefined;
  memory.lastRebalanceAtMs = nowMs;
  return {
    changes,
    state: stateNow('running', gen),
    wakeAtMs: grace,
    target,
    settled: false,
    moves,
    waitingFor: timedOut && !drained ? { acks: missingAcks, held: stillHeld } : undefined,
  };
}

/**
 * Whether some registered resource has no grant on a live node (`orphans`: nobody will run it without a new grant),
 * and whether some of those are granted to a node that is not a member (`awaited`: that node may be coming back).
 */
function orphanedWork(
  view: CoordinatorView,
  nodes: readonly PlacementNode[],
): { readonly orphans: boolean; readonly awaited: boolean } {
  const live = new Set(nodes.map((n) => n.id));
  let orphans = false;
  for (const r of view.resources) {
    const owners = view.grants.get(r) ?? [];
    if (owners.some((n) => live.has(n))) continue;
    orphans = true;
    if (owners.length > 0) return { orphans, awaited: true };
  }
  return { orphans, awaited: false };
}

function trackDepartures(view: CoordinatorView, config: CoordinatorConfig, memory: WorkingMemory, nowMs: number): void {
  if (memory.previousMembers !== undefined && config.gracePeriodMs > 0) {
    for (const [id, rec] of memory.previousMembers) {
      if (!view.members.has(id) && rec.static && !memory.departed.has(id))
        memory.departed.set(id, { atMs: nowMs, record: rec });
    }
  }
  for (const id of view.members.keys()) memory.departed.delete(id);
  for (const [id, d] of memory.departed) if (nowMs >= d.atMs + config.gracePeriodMs) memory.departed.delete(id);
  memory.previousMembers = view.members;
}

function effectiveNodes(
  view: CoordinatorView,
  config: CoordinatorConfig,
  memory: CoordinatorMemory,
  nowMs: number,
): PlacementNode[] {
  const nodes: PlacementNode[] = [];
  for (const m of view.members.values()) nodes.push({ id: m.nodeId, zone: m.zone, weight: m.weight });
  if (config.gracePeriodMs > 0) {
    for (const [id, d] of memory.departed) {
      if (!view.members.has(id) && nowMs < d.atMs + config.gracePeriodMs) {
        nodes.push({ id, zone: d.record.zone, weight: d.record.weight });
      }
    }
  }
  return nodes;
}

function nextGraceExpiry(memory: CoordinatorMemory, config: CoordinatorConfig, nowMs: number): number | undefined {
  let next: number | undefined;
  for (const d of memory.departed.values()) {
    const at = d.atMs + config.gracePeriodMs;
    if (at > nowMs) next = min(next, at);
  }
  return next;
}

function diff(
  grants: ReadonlyMap<string, readonly string[]>,
  target: ReadonlyMap<string, string>,
): { remove?: GrantRef; add?: GrantRef }[] {
  const out: { remove?: GrantRef; add?: GrantRef }[] = [];
  for (const [name, owners] of grants) {
    const want = target.get(name);
    let kept = false;
    let added = false;
    for (const nodeId of owners) {
      if (nodeId === want && !kept) {
        kept = true;
        continue;
      }
      // A move pairs the removal with the new grant (same transaction); extra grants are just removed.
      const add = !kept && !added && want !== undefined && !owners.includes(want);
      if (add) added = true;
      out.push(add ? { remove: { nodeId, name }, add: { nodeId: want, name } } : { remove: { nodeId, name } });
    }
  }
  for (const [name, nodeId] of target) {
    if (!grants.has(name) || (grants.get(name)?.length ?? 0) === 0) out.push({ add: { nodeId, name } });
  }
  return out;
}

/** Cheap and order-independent: the count and a sum of per-name FNV-1a hashes. */
function hashResources(resources: readonly string[]): string {
  let h = 0;
  for (const r of resources) {
    let x = 0x811c9dc5;
    for (let i = 0; i < r.length; i++) x = Math.imul(x ^ r.charCodeAt(i), 0x01000193);
    h = (h + (x >>> 0)) % 4294967296;
  }
  return `${resources.length}#${h}`;
}

function fingerprint(nodes: readonly PlacementNode[], resourceHash: string): string {
  const ns = nodes.map((n) => `${n.id}|${n.zone ?? ''}|${n.weight ?? 1}`).sort();
  return `${ns.join(',')}#${resourceHash}`;
}

function min(a: number | undefined, b: number | undefined): number | undefined {
  if (a === undefined) return b;
  if (b === undefined) return a;
  return Math.min(a, b);
}
