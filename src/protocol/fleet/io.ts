/**
 * Reading and writing the fleet's control-plane records through the store contract (layout in keys.ts). These
 * functions translate between keys and views and enforce the rules every writer must keep whatever the caller
 * decided: a record that could not be read is never overwritten (ADR 0012), the coordinator writes only under its
 * election guard, a generation is never handed out twice, and nothing is written for a group that was removed
 * (or removed and added again) since the caller read it.
 */
import {
  CorruptDataError,
  FleetGroupExistsError,
  FleetGroupNotFoundError,
  InvalidArgumentError,
  LimitExceededError,
  NodeIdInUseError,
} from '../../errors.js';
import type { Compare, KeyValue, Op, OpResult, Session, Store, Txn } from '../../store/contract.js';
import { Election } from '../../store/election.js';
import type { FleetPlacementInput, GroupPlacement } from '../../placement/fleet.js';
import { readAround, type CorruptionReporter } from '../groups/io.js';
import { NO_MUTANTS, type Mutants } from '../mutants.js';
import {
  decodeClaim,
  decodeDesired,
  decodeGroup,
  decodeMeta,
  decodeNode,
  decodeObserved,
  encodeRecord,
  MAX_ADDRESS_BYTES,
  MAX_FLEET_GROUPS,
  MAX_ZONE_CHARS,
  REPAIR_ADVICE,
  runsMachine,
  validateMachineList,
  validateMachineName,
  validateNodeId,
  validateReplicas,
  issuedOf,
  isIncarnation,
  isRaftIdTag,
  newIncarnation,
  newRaftIdTag,
  sameIncarnation,
  withControlId,
  withIssued,
  withIssuedAnywhere,
  wasIssued,
  type ClaimRecord,
  type DesiredRecord,
  type FleetKeys,
  type GroupRecord,
  type MetaRecord,
  type NodeRecord,
  type ObservedRecord,
} from './keys.js';
import { utf8Length } from '../../store/validate.js';

export type { CorruptionReporter };

function tryDecode<T>(decode: () => T, report: CorruptionReporter): T | undefined {
  try {
    return decode();
  } catch (err) {
    if (err instanceof CorruptDataError) {
      report(err);
      return undefined;
    }
    throw err;
  }
}

function rangeKvs(r: OpResult | undefined): readonly KeyValue[] {
  return r?.op === 'range' ? r.kvs : [];
}

function getKv(r: OpResult | undefined): KeyValue | undefined {
  return r?.op === 'get' ? r.kv : undefined;
}

/** The coordinator election of a fleet: src/store/election.ts under `coord/` (its guard fences writeDesired). */
export function fleetElection(store: Store, keys: FleetKeys, recheckIntervalMs?: number): Election {
  return new Election(store, { prefix: keys.coordinator, recheckIntervalMs });
}

// ---- reading ------------------------------------------------------------------------

export interface NodeView extends NodeRecord {
  readonly sessionId: string | undefined;
  /** Create revision of the node's key: a new one each time the node registers after its session ended. */
  readonly registeredRevision: number;
}

export interface FleetGroupView extends GroupRecord {
  /** Mod revision of the group's key (rewritten only by the unsafe recovery, recover.ts). Writers compare it. */
  readonly revision: number;
  /** The desired placement of this generation, if the coordinator wrote one. */
  readonly desired: DesiredRecord | undefined;
  /** Mod revision of the desired key as read (0: absent), whatever its generation: writeDesired compares it. */
  readonly desiredRevision: number;
  /** The leader's last report for this generation. */
  readonly observed: ObservedRecord | undefined;
  /** Mod revision of that report: how recent it is, in store revisions (0: none). */
  readonly observedRevision: number;
}

export interface FleetView {
  /** Live nodes (their sessions hold their keys), by id. */
  readonly nodes: ReadonlyMap<string, NodeView>;
  /** Live groups, by name. */
  readonly groups: ReadonlyMap<string, FleetGroupView>;
  /** The fleet's counters; undefined before the first group was added (or when unreadable: see `unreadable`). */
  readonly meta: MetaRecord | undefined;
  readonly metaRevision: number;
  /** The coordinator (the lowest election key), if any. */
  readonly coordinator: { readonly key: string; readonly token: number; readonly value: string } | undefined;
  /** Names claimed after a loss of the records (keys.ts ClaimRecord): groups on their way back, by name. */
  readonly claims: ReadonlyMap<string, ClaimRecord>;
  /**
   * Keys present but unreadable (each reported once through `report`). None of them is overwritten by the
   * functions below; a group whose record is unreadable is missing from `groups`.
   */
  readonly unreadable: readonly string[];
  /** Desired or observed records of a group that is gone or of an older generation: leftovers, never trusted. */
  readonly stale: readonly string[];
  /** A revision at least as new as every read (the reads are several snapshots; see readFleetView). */
  readonly revision: number;
}

/**
 * The whole fleet in a bounded number of reads: nodes and the election in one transaction; then groups, desired
 * and observed records in a range read each (a backend that pages a long read, SQLite, keeps its event loop
 * turning); then the meta record. Five reads whatever the fleet's size, of at most MAX_FLEET_GROUPS records each
 * (addGroup keeps the fleet within it) plus any leftovers written by hand. The reads are not one snapshot: a
 * desired or observed record is matched to its group by generation, and every write compares the revisions it
 * decided from. The one thing that depends on the order is the check for lost records (node.ts): the meta record is
 * read last, so group records read after a loss always come with a meta record read after it too.
 */
/**
 * Decoded records of earlier reads, by key, reused while a key's value is byte for byte the same (not its revision:
 * a store that lost its data hands revisions out again). A reader of a big fleet keeps one: at 10 000 groups, decoding
 * 30 000 records was most of a read's cost, and between two reads few of them change. Holds only the keys of the
 * last read.
 */
export class FleetRecordCache {
  #entries = new Map<string, { readonly value: string; readonly decoded: unknown }>();
  #seen = new Map<string, { readonly value: string; readonly decoded: unknown }>();

  /** `decode()` of `kv`, or the result of an earlier call for the same key and value. */
  decode<T>(kv: KeyValue, decode: () => T): T {
    const hit = this.#entries.get(kv.key);
    if (hit !== undefined && hit.value === kv.value) {
      this.#seen.set(kv.key, hit);
      return hit.decoded as T;
    }
    const decoded = decode();
    this.#seen.set(kv.key, { value: kv.value, decoded });
    return decoded;
  }

  /** A read is over: forget the keys it did not see. */
  endRead(): void {
    this.#entries = this.#seen;
    this.#seen = new Map();
  }
}

export async function readFleetView(
  store: Store,
  keys: FleetKeys,
  report: CorruptionReporter,
  cache?: FleetRecordCache,
): Promise<FleetView> {
  const small = await readAround(
    store,
    [
      { op: 'range', prefix: keys.nodes },
      { op: 'range', prefix: keys.coordinator },
      { op: 'range', prefix: keys.claims },
    ],
    report,
  );
  const groupsRead = await store.range(keys.groups);
  const desiredRead = await store.range(keys.desired);
  const observedRead = await store.range(keys.observed);
  // The meta record once more, after the groups: a node takes missing group records for removals unless the meta
  // record says the records were lost (another id, or none), and the loss must not fall between the two reads —
  // a meta record read before it and group records read after would make every group look removed.
  const metaAfter = await store.get(keys.meta);
  const unreadable: string[] = [...small.unreadable];
  const stale: string[] = [];
  // Node records are few and their check needs more than the value (the session): never from the cache.
  const decode = <T>(kv: KeyValue, fn: () => T, cacheable = true): T | undefined => {
    const r = tryDecode(cache === undefined || !cacheable ? fn : () => cache.decode(kv, fn), report);
    if (r === undefined) unreadable.push(kv.key);
    return r;
  };

  const nodes = new Map<string, NodeView>();
  for (const kv of rangeKvs(small.results[0])) {
    const n = decode(
      kv,
      () => {
        // Liveness is the session: a record attached to none was not written by a node and proves nothing.
        if (kv.sessionId === undefined) throw noSession(kv.key);
        return decodeNode(keys, kv.key, kv.value);
      },
      false,
    );
    if (n !== undefined) nodes.set(n.id, { ...n, sessionId: kv.sessionId, registeredRevision: kv.createRevision });
  }
  let coordinator: FleetView['coordinator'];
  for (const kv of rangeKvs(small.results[1])) {
    if (coordinator === undefined || kv.createRevision < coordinator.token) {
      coordinator = { key: kv.key, token: kv.createRevision, value: kv.value };
    }
  }
  const claims = new Map<string, ClaimRecord>();
  for (const kv of rangeKvs(small.results[2])) {
    const c = decode(kv, () => decodeClaim(keys, kv.key, kv.value), false);
    if (c !== undefined) claims.set(c.name, c);
  }
  const metaKv = metaAfter;
  const meta = metaKv === undefined ? undefined : decode(metaKv, () => decodeMeta(metaKv.key, metaKv.value));

  const desired = new Map<string, { rec: DesiredRecord | undefined; kv: KeyValue }>();
  for (const kv of desiredRead.kvs) {
    desired.set(kv.key.slice(keys.desired.length), {
      rec: decode(kv, () => decodeDesired(keys, kv.key, kv.value)),
      kv,
    });
  }
  const observed = new Map<string, { rec: ObservedRecord | undefined; kv: KeyValue }>();
  for (const kv of observedRead.kvs) {
    const rec = decode(kv, () => decodeObserved(keys, kv.key, kv.value));
    observed.set(kv.key.slice(keys.observed.length), { rec, kv });
  }
  const groups = new Map<string, FleetGroupView>();
  for (const kv of groupsRead.kvs) {
    const g = decode(kv, () => decodeGroup(keys, kv.key, kv.value));
    if (g === undefined) continue;
    const d = desired.get(g.name);
    const o = observed.get(g.name);
    groups.set(g.name, {
      ...g,
      revision: kv.modRevision,
      desired: d?.rec?.generation === g.generation ? d.rec : undefined,
      desiredRevision: d?.kv.modRevision ?? 0,
      observed: o?.rec?.generation === g.generation ? o.rec : undefined,
      observedRevision: o?.rec?.generation === g.generation ? o.kv.modRevision : 0,
    });
  }
  for (const [name, { rec, kv }] of [...desired, ...observed]) {
    if (rec !== undefined && groups.get(name)?.generation !== rec.generation) stale.push(kv.key);
  }
  cache?.endRead();
  return {
    nodes,
    groups,
    meta,
    metaRevision: metaKv?.modRevision ?? 0,
    coordinator,
    claims,
    unreadable,
    stale,
    revision: Math.max(small.revision, groupsRead.revision, desiredRead.revision, observedRead.revision),
  };
}

// ---- nodes ------------------------------------------------------------------------

function noSession(key: string): CorruptDataError {
  return new CorruptDataError(
    `${key} holds a node record attached to no session, which no node writes; nothing overwrites it: look at it, ` +
      'then delete it',
    { key, expected: 'a node record attached to the session of the node that registered it' },
  );
}

export interface NodeRegistration {
  readonly id: string;
  readonly zone?: string | undefined;
  readonly weight?: number | undefined;
  readonly address: string;
  readonly state?: 'active' | 'deactivating' | undefined;
  readonly incarnation: string;
  /** The state machines the node runs (placement puts a group only on nodes that run its machine); absent: all. */
  readonly machines?: readonly string[] | undefined;
}

function checkNode(n: NodeRegistration): NodeRecord {
  validateNodeId(n.id);
  const zone = n.zone ?? '';
  if (typeof zone !== 'string' || zone.length > MAX_ZONE_CHARS) {
    throw new InvalidArgumentError(`node ${n.id}: zone must be a string of at most ${MAX_ZONE_CHARS} characters`);
  }
  const weight = n.weight ?? 1;
  if (typeof weight !== 'number' || !Number.isFinite(weight) || weight <= 0) {
    throw new InvalidArgumentError(`node ${n.id}: weight must be a positive number, got ${String(weight)}`);
  }
  if (typeof n.address !== 'string' || n.address.length === 0 || utf8Length(n.address) > MAX_ADDRESS_BYTES) {
    throw new InvalidArgumentError(
      `node ${n.id}: address must be a non-empty string of at most ${MAX_ADDRESS_BYTES} bytes (host:port)`,
    );
  }
  const state = n.state ?? 'active';
  if (state !== 'active' && state !== 'deactivating') {
    throw new InvalidArgumentError(`node ${n.id}: state must be 'active' or 'deactivating'`);
  }
  if (typeof n.incarnation !== 'string' || n.incarnation.length === 0 || n.incarnation.length > 128) {
    throw new InvalidArgumentError(`node ${n.id}: incarnation must be a string of 1-128 characters`);
  }
  const rec: NodeRecord = { id: n.id, zone, weight, address: n.address, state, incarnation: n.incarnation };
  return n.machines === undefined ? rec : { ...rec, machines: validateMachineList(n.machines, `node ${n.id}`) };
}

/**
 * Register this node (or update its own record: `state: 'deactivating'` when it drains), attached to `session` so
 * that it vanishes when the node dies. Refused with NodeIdInUseError while another live session holds the id, and
 * with CorruptDataError for a record under the id that is attached to no session (not written by a node: never
 * overwritten). Resolves to the key's create revision (new after each registration on a new session).
 */
export async function registerNode(
  store: Store,
  keys: FleetKeys,
  session: Session,
  registration: NodeRegistration,
): Promise<number> {
  const rec = checkNode(registration);
  const key = keys.node(rec.id);
  const value = encodeRecord(rec);
  for (;;) {
    const r = await store.txn({
      compare: [{ key, target: 'exists', exists: false }],
      then: [{ op: 'put', key, value, session }],
      else: [{ op: 'get', key }],
    });
    if (r.succeeded) return r.revision;
    const kv = getKv(r.results[0]);
    if (kv === undefined) continue; // its session ended between the compare and the get
    if (kv.sessionId === undefined) throw noSession(key);
    if (kv.sessionId !== session.id) throw new NodeIdInUseError(rec.id, `fleet ${keys.fleet}`);
    // Our own record: rewrite it as long as it is still the one we read (its session is ours, so its content is).
    const u = await store.txn({
      compare: [{ key, target: 'modRevision', op: '=', value: kv.modRevision }],
      then: [{ op: 'put', key, value, session }],
    });
    if (u.succeeded) return kv.createRevision;
  }
}

// ---- groups ------------------------------------------------------------------------

export interface AddGroupOptions {
  readonly replicas: number;
  readonly machine: string;
  /**
   * A node adding: whether it keeps a replica of a group of this name that is on its way back after a loss of the
   * records (`meta`: the meta record as read, undefined when there is none) — one it may not have claimed in the
   * store yet (its first round after the loss has not run). Such an add is refused like a claimed name.
   */
  readonly claimedHere?: (
    name: string,
    meta: MetaRecord | undefined,
  ) => { readonly generation: number; readonly node: string } | undefined;
  /** Where the Raft id tag is drawn from (newRaftIdTag): the simulator's seeded source; absent: the system's. */
  readonly random?: (() => number) | undefined;
}

function metaOf(kv: KeyValue | undefined): MetaRecord {
  // Throws CorruptDataError naming the key: an add or remove never overwrites meta it cannot read.
  // None: the first add writes it, with a new id and nothing handed out yet (also after the records were lost).
  return kv === undefined ? { lastGeneration: 0, groups: 0, issued: [] } : decodeMeta(kv.key, kv.value);
}

/**
 * A group's record and the fleet's meta record (and the name's claim, ClaimRecord, when `claimKey` is given), read
 * together (one round trip): adds and removes compare them, so that they go one at a time per fleet. The meta record
 * is decoded (CorruptDataError when unreadable).
 */
async function readGroupWithMeta(
  store: Store,
  keys: FleetKeys,
  key: string,
  claimKey?: string,
): Promise<{
  kv: ReturnType<typeof getKv>;
  metaKv: ReturnType<typeof getKv>;
  meta: ReturnType<typeof metaOf>;
  claimKv: ReturnType<typeof getKv>;
}> {
  const r = await store.txn({
    compare: [],
    then: [
      { op: 'get', key },
      { op: 'get', key: keys.meta },
      ...(claimKey === undefined ? [] : [{ op: 'get' as const, key: claimKey }]),
    ],
  });
  const metaKv = getKv(r.results[1]);
  return { kv: getKv(r.results[0]), metaKv, meta: metaOf(metaKv), claimKv: getKv(r.results[2]) };
}

/**
 * Add a group under a generation never handed out before (the meta record's counter, updated in the same
 * transaction). Refused with FleetGroupExistsError while a group of that name is live, LimitExceededError at
 * MAX_FLEET_GROUPS, CorruptDataError when the group's key or the meta record is present but unreadable.
 * After a request whose outcome is unknown (StoreUnavailableError), read the fleet before adding again: the add
 * may have been applied, and a second one is refused as a duplicate.
 */
export async function addGroup(
  store: Store,
  keys: FleetKeys,
  name: string,
  options: AddGroupOptions,
): Promise<GroupRecord> {
  const key = keys.group(name);
  const replicas = validateReplicas(options?.replicas);
  const machine = validateMachineName(options?.machine);
  const claimKey = keys.claimOf(name);
  for (;;) {
    const { kv: existing, metaKv, meta, claimKv } = await readGroupWithMeta(store, keys, key, claimKey);
    if (existing !== undefined) {
      const g = decodeGroup(keys, existing.key, existing.value);
      throw new FleetGroupExistsError(name, keys.fleet, g.generation);
    }
    if (claimKv !== undefined) {
      // Unreadable: CorruptDataError naming the key (a claim is never overwritten unread).
      const c = decodeClaim(keys, claimKv.key, claimKv.value);
      throw new FleetGroupExistsError(name, keys.fleet, c.generation, { node: c.node });
    }
    const local = options.claimedHere?.(name, metaKv === undefined ? undefined : meta);
    if (local !== undefined) throw new FleetGroupExistsError(name, keys.fleet, local.generation, { node: local.node });
    if (meta.groups >= MAX_FLEET_GROUPS) {
      throw new LimitExceededError(
        'groups per fleet',
        meta.groups + 1,
        MAX_FLEET_GROUPS,
        `fleet ${keys.fleet} has ${meta.groups} groups, the limit; ${name} was not added. Remove groups, or ` +
          'start another fleet',
      );
    }
    const group: GroupRecord = {
      name,
      replicas,
      machine,
      generation: meta.lastGeneration + 1,
      incarnation: newIncarnation(),
      tag: newRaftIdTag(options.random),
    };
    const written = await writeNewGroup(
      store,
      keys,
      group,
      metaKv,
      {
        ...withControlId(meta),
        lastGeneration: group.generation,
        groups: meta.groups + 1,
        issued: withIssued(meta, group.generation),
      },
      [],
      [{ key: claimKey, target: 'exists', exists: false }],
    );
    if (written) return group;
    // Another add or remove came first: read again (the name may be taken now).
  }
}

/**
 * A group record where there is none, with the meta record as `meta` (and `extra` writes), in one transaction that
 * compares the group's key (absent) and the meta record (unchanged since `metaKv` was read): adds, write-backs and
 * removes of a fleet go one at a time. False when either changed (read again and decide again).
 */
async function writeNewGroup(
  store: Store,
  keys: FleetKeys,
  group: GroupRecord,
  metaKv: KeyValue | undefined,
  meta: MetaRecord,
  extra: readonly Op[] = [],
  extraCompare: readonly Compare[] = [],
): Promise<boolean> {
  const key = keys.group(group.name);
  const w = await store.txn({
    compare: [
      { key, target: 'exists', exists: false },
      { key: keys.meta, target: 'modRevision', op: '=', value: metaKv?.modRevision ?? 0 },
      ...extraCompare,
    ],
    then: [
      { op: 'put', key, value: encodeRecord(group) },
      ...extra,
      { op: 'put', key: keys.meta, value: encodeRecord(meta) },
    ],
  });
  return w.succeeded;
}

/**
 * Remove a live group: its record, desired placement and observed state go in one transaction (its members see it
 * gone and stop; the generation is never handed out again). Refused with FleetGroupNotFoundError when there is no
 * such group, CorruptDataError when its record or the meta record is unreadable. Resolves to the removed record.
 */
export async function removeGroup(store: Store, keys: FleetKeys, name: string): Promise<GroupRecord> {
  const key = keys.group(name);
  const claimKey = keys.claimOf(name);
  for (;;) {
    const { kv, metaKv, meta, claimKv } = await readGroupWithMeta(store, keys, key, claimKey);
    if (kv === undefined && claimKv !== undefined) {
      // Giving up on a group that was to come back after a loss of the records. Its replicas stay orphans (kept, not
      // served): its generation counts as handed out, so none of them claims the name again or writes it back, and
      // the counter passes it, so the name added again later never shares its Raft group id.
      let c: ClaimRecord | undefined;
      try {
        c = decodeClaim(keys, claimKv.key, claimKv.value);
      } catch {
        c = undefined; // junk under the claim key: removing it is what the operator asked for
      }
      const w = await store.txn({
        compare: [
          { key, target: 'exists', exists: false },
          { key: claimKey, target: 'modRevision', op: '=', value: claimKv.modRevision },
          { key: keys.meta, target: 'modRevision', op: '=', value: metaKv?.modRevision ?? 0 },
        ],
        then: [
          { op: 'delete', key: claimKey },
          {
            op: 'put',
            key: keys.meta,
            value: encodeRecord({
              ...withControlId(meta),
              lastGeneration: Math.max(meta.lastGeneration, c?.generation ?? 0),
              issued: c === undefined ? issuedOf(meta) : withIssuedAnywhere(meta, c.generation),
            }),
          },
        ],
      });
      if (!w.succeeded) continue;
      return c === undefined
        ? { name, replicas: 1, machine: 'unknown', generation: Math.max(1, meta.lastGeneration) }
        : {
            name,
            replicas: c.replicas,
            machine: c.machine,
            generation: c.generation,
            ...(c.incarnation !== undefined ? { incarnation: c.incarnation } : {}),
          };
    }
    if (kv === undefined) throw new FleetGroupNotFoundError(name, keys.fleet);
    const group = decodeGroup(keys, kv.key, kv.value);
    const w = await store.txn({
      compare: [
        { key, target: 'modRevision', op: '=', value: kv.modRevision },
        { key: keys.meta, target: 'modRevision', op: '=', value: metaKv?.modRevision ?? 0 },
      ],
      then: [
        { op: 'delete', key },
        { op: 'delete', key: keys.desiredOf(name) },
        { op: 'delete', key: keys.observedOf(name) },
        {
          op: 'put',
          key: keys.meta,
          value: encodeRecord({ ...withControlId(meta), groups: Math.max(0, meta.groups - 1) }),
        },
      ],
    });
    if (w.succeeded) return group;
  }
}

/**
 * Give a meta record of an older release its id (MetaRecord.id), so that a loss of the records can be detected from
 * now on. Compares the record's revision: when someone else wrote it meanwhile, nothing is written (they gave it one).
 */
export async function ensureControlId(store: Store, keys: FleetKeys): Promise<void> {
  const { metaKv, meta } = await readGroupWithMeta(store, keys, keys.meta);
  if (metaKv === undefined || meta.id !== undefined) return;
  await store.txn({
    compare: [{ key: keys.meta, target: 'modRevision', op: '=', value: metaKv.modRevision }],
    then: [{ op: 'put', key: keys.meta, value: encodeRecord(withControlId(meta)) }],
  });
}

/** What adoptGroup writes back: a group as its leader's replica knows it. */
export interface AdoptedGroup {
  readonly name: string;
  readonly generation: number;
  readonly machine: string;
  /** The group's voters, as its leader's committed membership says (they become the desired members). */
  readonly members: readonly string[];
  /** The leader writing it back (it becomes the desired leader). */
  readonly leader: string;
  /** The group's replica count as its record had it, when known (else: the number of voters). */
  readonly replicas?: number | undefined;
  /** The group's incarnation as its record had it (GroupRecord.incarnation), when known: written back as it was. */
  readonly incarnation?: string | undefined;
  /** The tag of its replicas' Raft group id (GroupRecord.tag; none for an id without one): written back as it is. */
  readonly tag?: string | undefined;
}

/**
 * Write a group back after the control plane lost its records (docs/fleet.md, "The control store loses its data";
 * ADR 0023), under the generation its replicas have: its record, a desired record naming its voters (`version` 2:
 * no node may bootstrap an empty replica of it, the ones missing join), and the counter raised past it — all in one
 * transaction that compares the group's key (absent) and the meta record. Only a generation the present records never
 * handed out may come back (MetaRecord.issued): an add since the loss may have given the same name that very
 * generation. Resolves `adopted` (also when it was written back already: the same generation and incarnation),
 * `taken` (a group of that name was added since the loss, or another incarnation of it was written back) or `issued`. The group's `replicas`: as given, else the number of voters it has now.
 */
export async function adoptGroup(
  store: Store,
  keys: FleetKeys,
  g: AdoptedGroup,
): Promise<'adopted' | 'taken' | 'issued'> {
  const key = keys.group(g.name);
  const machine = validateMachineName(g.machine);
  if (!g.members.includes(g.leader)) {
    throw new InvalidArgumentError(`adoptGroup: the leader ${g.leader} is not one of the members`);
  }
  if (g.incarnation !== undefined && !isIncarnation(g.incarnation)) {
    throw new InvalidArgumentError(`adoptGroup: incarnation ${JSON.stringify(g.incarnation)} is not one`);
  }
  if (g.tag !== undefined && !isRaftIdTag(g.tag)) {
    throw new InvalidArgumentError(`adoptGroup: tag ${JSON.stringify(g.tag)} is not one`);
  }
  const members = [g.leader, ...g.members.filter((m) => m !== g.leader)];
  for (;;) {
    const { kv, metaKv, meta } = await readGroupWithMeta(store, keys, key);
    if (wasIssued(meta, g.generation)) return 'issued';
    if (kv !== undefined) {
      // Written back already (by this group's leader of a moment ago): the same Raft group id (generation and tag),
      // never handed out, and the same incarnation (another one is a group of the same name and generation from
      // before another loss).
      const rec = decodeGroup(keys, kv.key, kv.value);
      const same =
        rec.generation === g.generation && rec.tag === g.tag && sameIncarnation(g.incarnation, rec.incarnation);
      return same ? 'adopted' : 'taken';
    }
    const replicas = validateReplicas(g.replicas ?? members.length);
    const group: GroupRecord = {
      name: g.name,
      replicas,
      machine,
      generation: g.generation,
      ...(g.incarnation !== undefined ? { incarnation: g.incarnation } : {}),
      ...(g.tag !== undefined ? { tag: g.tag } : {}),
    };
    const desired: DesiredRecord = {
      name: g.name,
      generation: g.generation,
      members,
      leader: g.leader,
      token: 0,
      initial: members,
      version: 2,
    };
    const written = await writeNewGroup(
      store,
      keys,
      group,
      metaKv,
      {
        ...withControlId(meta),
        lastGeneration: Math.max(meta.lastGeneration, g.generation),
        groups: meta.groups + 1,
        issued: issuedOf(meta),
      },
      [
        { op: 'put', key: keys.desiredOf(g.name), value: encodeRecord(desired) },
        { op: 'delete', key: keys.observedOf(g.name) },
        // Back: the name needs no claim any more (whoever wrote it).
        { op: 'delete', key: keys.claimOf(g.name) },
      ],
    );
    if (written) return 'adopted';
  }
}

/** Attempts of claimGroup and reserveGenerations when other writers change the meta record under them. */
const CLAIM_ATTEMPTS = 16;

/**
 * Claim group name `c.name` after a loss of the records (ClaimRecord): written only where the name has no group
 * record and no claim, and only for a generation the present records never handed out (adoptGroup could not write
 * such a group back; a claim would only block the name). `claimed` when written; `taken` when a group record, a
 * claim or a handed-out generation came first (the name is not free for an add either way); `busy` when the meta
 * record kept changing under it (try again later).
 */
export async function claimGroup(store: Store, keys: FleetKeys, c: ClaimRecord): Promise<'claimed' | 'taken' | 'busy'> {
  const key = keys.group(c.name);
  const claimKey = keys.claimOf(c.name);
  validateMachineName(c.machine);
  validateReplicas(c.replicas);
  if (c.incarnation !== undefined && !isIncarnation(c.incarnation)) {
    throw new InvalidArgumentError(`claimGroup: incarnation ${JSON.stringify(c.incarnation)} is not one`);
  }
  for (let attempt = 0; attempt < CLAIM_ATTEMPTS; attempt++) {
    const { kv, metaKv, meta, claimKv } = await readGroupWithMeta(store, keys, key, claimKey);
    if (kv !== undefined || claimKv !== undefined || wasIssued(meta, c.generation)) return 'taken';
    const w = await store.txn({
      compare: [
        { key, target: 'exists', exists: false },
        { key: claimKey, target: 'exists', exists: false },
        { key: keys.meta, target: 'modRevision', op: '=', value: metaKv?.modRevision ?? 0 },
      ],
      then: [{ op: 'put', key: claimKey, value: encodeRecord(c) }],
    });
    if (w.succeeded) return 'claimed';
  }
  return 'busy';
}

/**
 * Raise the meta record's counter to at least `generation` without handing anything out (`issued` unchanged), so
 * that no add after this hands out a generation up to it: after a loss of the records the counter starts again from
 * 1, and an add of *another* name would otherwise take the generation of a group still on its way back — which could
 * then never be written back (adoptGroup refuses a generation the present records handed out). Writes a new meta
 * record (with a new id) where there is none. False when the meta record kept changing under it (try again later).
 */
export async function reserveGenerations(store: Store, keys: FleetKeys, generation: number): Promise<boolean> {
  if (!Number.isSafeInteger(generation) || generation < 1) {
    throw new InvalidArgumentError(`reserveGenerations: a generation is an integer >= 1, got ${String(generation)}`);
  }
  for (let attempt = 0; attempt < CLAIM_ATTEMPTS; attempt++) {
    const { metaKv, meta } = await readGroupWithMeta(store, keys, keys.meta);
    if (meta.lastGeneration >= generation) return true;
    const w = await store.txn({
      compare: [{ key: keys.meta, target: 'modRevision', op: '=', value: metaKv?.modRevision ?? 0 }],
      then: [
        {
          op: 'put',
          key: keys.meta,
          value: encodeRecord({ ...withControlId(meta), lastGeneration: generation, issued: issuedOf(meta) }),
        },
      ],
    });
    if (w.succeeded) return true;
  }
  return false;
}

// ---- desired placement ----------------------------------------------------------------

export interface DesiredEntry {
  readonly name: string;
  readonly members: readonly string[];
  readonly leader: string;
}

export interface DesiredWriteResult {
  /**
   * `written`: every entry. `deposed`: the guard failed (this node no longer leads; stop). `stale`: the guard held
   * but a group or desired record changed since `view` was read (read again and decide again). Entries of the
   * batches before the failing one are written either way.
   */
  readonly outcome: 'written' | 'deposed' | 'stale';
  readonly written: number;
}

/**
 * Write desired placements decided from `view`, under the coordinator's election guard, in batches that fit one
 * transaction. Each entry's transaction also compares its group's record (still the generation decided for) and its
 * desired key (still the revision read: junk that landed since is not overwritten unread). An entry whose desired
 * key was unreadable in `view` is refused before anything is written (CorruptDataError naming it): leave such
 * groups out until the key is repaired. `mutants` is for the simulator only.
 */
export async function writeDesired(
  store: Store,
  keys: FleetKeys,
  guard: Compare,
  view: FleetView,
  entries: readonly DesiredEntry[],
  mutants: Mutants = NO_MUTANTS,
): Promise<DesiredWriteResult> {
  if (guard.target !== 'createRevision') {
    throw new InvalidArgumentError('writeDesired: guard must be a Leadership.guard (a createRevision compare)');
  }
  const unreadable = new Set(view.unreadable);
  const perEntry: { compare: Compare[]; op: Op }[] = [];
  for (const e of entries) {
    const group = view.groups.get(e.name);
    if (group === undefined) {
      throw new InvalidArgumentError(`writeDesired: group ${JSON.stringify(e.name)} is not a live group of the view`);
    }
    const key = keys.desiredOf(e.name);
    if (unreadable.has(key)) {
      throw new CorruptDataError(
        `${key} could not be read, so its desired placement is not overwritten; look at it, then delete it`,
        { key },
      );
    }
    if (e.members.length === 0 || !e.members.includes(e.leader) || new Set(e.members).size !== e.members.length) {
      throw new InvalidArgumentError(
        `writeDesired: group ${e.name} needs distinct, non-empty members that include the leader ${e.leader}`,
      );
    }
    const members = [e.leader, ...e.members.filter((m) => m !== e.leader)];
    const prev = group.desired;
    const rec: DesiredRecord = {
      name: e.name,
      generation: group.generation,
      members,
      leader: e.leader,
      token: guard.value,
      // The bootstrap voters are fixed by the generation's first record (keys.ts, DesiredRecord.initial).
      initial: prev?.initial ?? members,
      version: (prev?.version ?? 0) + 1,
    };
    perEntry.push({
      compare: [
        { key: keys.group(e.name), target: 'modRevision', op: '=', value: group.revision },
        { key, target: 'modRevision', op: '=', value: group.desiredRevision },
      ],
      op: { op: 'put', key, value: encodeRecord(rec) },
    });
  }
  // A guard compare and an else-get per transaction, then three (two compares and a put) per entry.
  const perBatch = Math.max(1, Math.floor((store.limits.maxTxnOps - 2) / 3));
  const unguarded = mutants.has('unguarded-coordinator');
  let written = 0;
  for (let i = 0; i < perEntry.length; i += perBatch) {
    const batch = perEntry.slice(i, i + perBatch);
    const r = await store.txn({
      compare: [...(unguarded ? [] : [guard]), ...batch.flatMap((b) => b.compare)],
      then: batch.map((b) => b.op),
      else: [{ op: 'get', key: guard.key }],
    });
    if (!r.succeeded) {
      const leader = getKv(r.results[0]);
      const holds = leader !== undefined && leader.createRevision === guard.value;
      return { outcome: holds ? 'stale' : 'deposed', written };
    }
    written += batch.length;
  }
  return { outcome: 'written', written };
}

// ---- observed state ------------------------------------------------------------------

/**
 * Report a group's observed state (called by its leader). Written only while the group is live with the record's
 * generation, and not over a report of the same generation with a higher term (a deposed leader's late report).
 * Resolves `written`, `stale` (a newer term is there) or `gone` (the group was removed or re-added). A report that
 * is present but unreadable is not overwritten: CorruptDataError naming it.
 */
export async function reportObserved(
  store: Store,
  keys: FleetKeys,
  record: ObservedRecord,
): Promise<'written' | 'stale' | 'gone'> {
  const value = checkedReport(keys, record);
  for (;;) {
    const r = await store.txn({ compare: [], then: reportReads(keys, record) });
    const d = decideReport(keys, record, value, getKv(r.results[0]), getKv(r.results[1]));
    if (typeof d === 'string') return d;
    if ((await store.txn(d)).succeeded) return 'written';
  }
}

/** What became of one report: written, refused (`stale`, `gone`), or its group's records could not be read. */
export type ReportOutcome = 'written' | 'stale' | 'gone' | CorruptDataError;

/**
 * reportObserved for many groups (their leaders on one node), in a read and a write transaction per batch that
 * fits: a node leading thousands of groups reported each in two round trips of its own, and its store writes were
 * the biggest part of a cold start's cost. The same rules per record; a batch whose write finds something changed
 * since its read (another report, a removal) is retried record by record. Resolves each record's outcome, in order
 * (a group or report record present but unreadable: its CorruptDataError); a record that cannot be decoded back is
 * refused before anything is written (InvalidArgumentError). Store errors reject the whole call.
 */
export async function reportObservedMany(
  store: Store,
  keys: FleetKeys,
  records: readonly ObservedRecord[],
): Promise<ReportOutcome[]> {
  const values = records.map((record) => checkedReport(keys, record));
  if (new Set(records.map((r) => r.name)).size !== records.length) {
    throw new InvalidArgumentError('reportObservedMany: one record per group in a batch');
  }
  const out: ReportOutcome[] = [];
  // Two compares and a put per record in the write, two gets in the read.
  const perBatch = Math.max(1, Math.floor(store.limits.maxTxnOps / 3));
  for (let i = 0; i < records.length; i += perBatch) {
    const batch = records.slice(i, i + perBatch);
    const r = await store.txn({ compare: [], then: batch.flatMap((rec) => reportReads(keys, rec)) });
    const outcomes: (ReportOutcome | undefined)[] = [];
    const compare: Compare[] = [];
    const then: Op[] = [];
    batch.forEach((rec, j) => {
      let d: ReturnType<typeof decideReport>;
      try {
        d = decideReport(keys, rec, values[i + j]!, getKv(r.results[2 * j]), getKv(r.results[2 * j + 1]));
      } catch (error) {
        // Unreadable records are that record's error, as in reportObserved: never overwritten.
        if (!(error instanceof CorruptDataError)) throw error;
        outcomes.push(error);
        return;
      }
      if (typeof d === 'string') {
        outcomes.push(d);
        return;
      }
      outcomes.push(undefined);
      compare.push(...d.compare);
      then.push(...d.then);
    });
    const w = then.length === 0 ? { succeeded: true } : await store.txn({ compare, then });
    for (let j = 0; j < batch.length; j++) {
      const o = outcomes[j];
      if (o !== undefined) out.push(o);
      else if (w.succeeded) out.push('written');
      else {
        // Something changed since the read: one by one.
        out.push(
          await reportObserved(store, keys, batch[j]!).catch((error: unknown) => {
            if (error instanceof CorruptDataError) return error;
            throw error;
          }),
        );
      }
    }
  }
  return out;
}

/** A report's value, checked as a reader will check it: a report nobody could read back is the caller's bug. */
function checkedReport(keys: FleetKeys, record: ObservedRecord): string {
  const value = encodeRecord(record);
  try {
    decodeObserved(keys, keys.observedOf(record.name), value);
  } catch (cause) {
    throw new InvalidArgumentError(`reportObserved: ${(cause as Error).message.replace(REPAIR_ADVICE, '')}`, { cause });
  }
  return value;
}

/** The reads a report decides on: its group's record and the report in place. */
function reportReads(keys: FleetKeys, record: ObservedRecord): Op[] {
  return [
    { op: 'get', key: keys.group(record.name) },
    { op: 'get', key: keys.observedOf(record.name) },
  ];
}

/**
 * The report rule: `gone` when the group is not live with the record's generation, `stale` over a report of the
 * same generation with a higher term (a deposed leader's late report), else the guarded write (both records
 * unchanged since they were read). An unreadable record throws its CorruptDataError (never overwritten).
 */
function decideReport(
  keys: FleetKeys,
  record: ObservedRecord,
  value: string,
  gkv: KeyValue | undefined,
  okv: KeyValue | undefined,
): 'gone' | 'stale' | Txn {
  if (gkv === undefined || decodeGroup(keys, gkv.key, gkv.value).generation !== record.generation) return 'gone';
  if (okv !== undefined) {
    const prev = decodeObserved(keys, okv.key, okv.value);
    if (prev.generation === record.generation && prev.term > record.term) return 'stale';
  }
  const key = keys.observedOf(record.name);
  return {
    compare: [
      { key: gkv.key, target: 'modRevision', op: '=', value: gkv.modRevision },
      { key, target: 'modRevision', op: '=', value: okv?.modRevision ?? 0 },
    ],
    then: [{ op: 'put', key, value }],
  };
}

// ---- leaving and placing ---------------------------------------------------------------

/**
 * Delete this node's record without ending its session (it has drained and leaves the fleet), only if it is still
 * the registration made at `registeredRevision` (registerNode's result): never a later process's record under the
 * same id. Resolves whether it deleted it.
 */
export async function deregisterNode(
  store: Store,
  keys: FleetKeys,
  nodeId: string,
  registeredRevision: number,
): Promise<boolean> {
  const key = keys.node(nodeId);
  const r = await store.txn({
    compare: [{ key, target: 'createRevision', op: '=', value: registeredRevision }],
    then: [{ op: 'delete', key }],
  });
  return r.succeeded;
}

/**
 * The live nodes of `view` that run state machine `machine`: those whose record lists it, and those whose record
 * lists nothing (an older release: it may). `addGroup` on a node or a client accepts a machine only when one does
 * (or the node itself runs it): a group nobody can run would only wait, unplaced.
 */
export function machineRunners(view: FleetView, machine: string): string[] {
  return [...view.nodes.values()].filter((n) => runsMachine(n, machine)).map((n) => n.id);
}

/**
 * The InvalidArgumentError for a machine no live node runs, naming the machines they do run; `anyway` says how to
 * add the group all the same, where the caller may.
 */
export function noRunnerError(
  view: FleetView,
  fleet: string,
  name: string,
  machine: string,
  anyway?: string,
): InvalidArgumentError {
  const known = [...new Set([...view.nodes.values()].flatMap((n) => n.machines ?? []))].sort();
  return new InvalidArgumentError(
    `addGroup(${name}): no live node of fleet ${fleet} runs state machine ${JSON.stringify(machine)} ` +
      `(the live nodes run: ${known.length > 0 ? known.join(', ') : 'none'}); start a node with it in its ` +
      '`machines` first, or check the name' +
      (anyway === undefined ? '' : ` (or ${anyway} to add it anyway)`),
  );
}

/**
 * The check of an add from outside the fleet (a client, the CLI): the live nodes that run `machine`, or
 * noRunnerError when nodes are live and none does. With no node live (groups added before the fleet starts) there
 * is nothing to check against: none.
 */
export function checkMachineRunners(
  view: FleetView,
  fleet: string,
  name: string,
  machine: string,
  anyway: string,
): string[] {
  const runners = machineRunners(view, machine);
  if (view.nodes.size > 0 && runners.length === 0) throw noRunnerError(view, fleet, name, machine, anyway);
  return runners;
}

/**
 * The placement input of `view` (src/placement/fleet.ts): the active nodes with the state machines they run (a
 * deactivating node holds no desired member, so its replicas move elsewhere before it leaves), every live group
 * with its machine (placed only on nodes that run it), and the desired placements in force as `previous` (so
 * desired leaders stay where balance allows).
 */
export function placementInputOf(view: FleetView): FleetPlacementInput {
  const nodes = [...view.nodes.values()]
    .filter((n) => n.state === 'active')
    .map((n) => ({ id: n.id, zone: n.zone, weight: n.weight, machines: n.machines }));
  const groups = [...view.groups.values()].map((g) => ({ name: g.name, replicas: g.replicas, machine: g.machine }));
  const previous: GroupPlacement[] = [];
  for (const g of view.groups.values()) {
    if (g.desired !== undefined) {
      previous.push({ name: g.name, replicas: g.replicas, members: g.desired.members, leader: g.desired.leader });
    }
  }
  return { nodes, groups, previous: { nodes: [], groups: previous } };
}
