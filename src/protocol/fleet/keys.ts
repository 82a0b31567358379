/**
 * Key layout and record codecs of the fleet's control plane (docs/fleet.md, "Control-plane records"). Everything
 * read from the store is untrusted: decoders return a typed record or throw CorruptDataError naming the key, and
 * a record must describe the key it is stored under (a node record under another node's key is refused too).
 *
 * Layout, under `f/<fleet>/`:
 *   nodes/<nodeId>     node record, attached to the node's session (vanishes when the node dies)
 *   meta               the fleet's counters (the last group generation handed out, the number of groups), the
 *                      control plane's id (a new one means the records were lost: docs/fleet.md) and the ranges of
 *                      generations these records handed out
 *   groups/<name>      group record: replicas, state machine name, generation, incarnation, Raft id tag
 *   desired/<name>     desired members and leader, written by the coordinator under its election guard
 *   observed/<name>    what the group's leader reports: membership, leader, term, lag, stuck
 *   coord/             the coordinator election (src/store/election.ts)
 */
import { randomBytes } from 'node:crypto';
import { intField, parseRecord, strField } from '../records.js';
import { CorruptDataError, InvalidArgumentError } from '../../errors.js';
import { show } from '../../options.js';
import { MAX_REPLICAS } from '../../placement/slots.js';
import { isWellFormed, utf8Length } from '../../store/validate.js';
import { validateName, validateNodeId } from '../names.js';

export { validateNodeId };

export const FLEET_PROTOCOL_VERSION = 1;
/**
 * Groups one fleet may hold. The coordinator reads every group record and places them all in one pass; the
 * placement of 10 000 groups takes milliseconds, and 100 000 keeps a full read of the fleet's records in the tens of
 * megabytes. Above it, run several fleets.
 */
export const MAX_FLEET_GROUPS = 100_000;
/**
 * Group names share the Raft group name alphabet ([A-Za-z0-9._:/-]); the Raft group id is
 * `<name>:<generation>.<tag>` and Raft allows 110 characters, so a name keeps 30 for the rest (a safe integer has at
 * most 16 digits, a tag 8 characters).
 */
export const MAX_FLEET_GROUP_NAME_CHARS = 80;
const GROUP_NAME_RE = /^[A-Za-z0-9._:/-]+$/;
/** State machine names are routing metadata (a key of the node's `machines` map), not a payload. */
export const MAX_MACHINE_NAME_CHARS = 100;
/** State machines one node record may list (its `machines`): metadata for placement, kept small. */
export const MAX_NODE_MACHINES = 256;
/** Node addresses are metadata for routing (host:port, URL), not a payload. */
export const MAX_ADDRESS_BYTES = 512;
export const MAX_ZONE_CHARS = 64;

export function validateFleetName(name: string): string {
  return validateName(name, 'fleet name');
}

/** A fleet group name: 1–80 characters of A-Z a-z 0-9 . _ : / - (it becomes part of a Raft group id). */
export function validateFleetGroupName(name: unknown): string {
  if (typeof name !== 'string' || name.length === 0 || name.length > MAX_FLEET_GROUP_NAME_CHARS) {
    throw new InvalidArgumentError(
      `fleet group name ${JSON.stringify(name)} is invalid: use 1-${MAX_FLEET_GROUP_NAME_CHARS} characters of ` +
        'A-Z a-z 0-9 . _ : / -',
    );
  }
  if (!GROUP_NAME_RE.test(name)) {
    throw new InvalidArgumentError(
      `fleet group name ${JSON.stringify(name)} is invalid: use only the characters A-Z a-z 0-9 . _ : / -`,
    );
  }
  return name;
}

export function validateReplicas(replicas: unknown): number {
  if (typeof replicas !== 'number' || !Number.isInteger(replicas) || replicas < 1 || replicas > MAX_REPLICAS) {
    throw new InvalidArgumentError(
      `replicas must be an integer from 1 to ${MAX_REPLICAS}, got ${show(replicas)}; 3 or 5 is usual for Raft`,
    );
  }
  return replicas;
}

export function validateMachineName(machine: unknown): string {
  if (
    typeof machine !== 'string' ||
    machine.length === 0 ||
    machine.length > MAX_MACHINE_NAME_CHARS ||
    // eslint-disable-next-line no-control-regex
    /[\u0000-\u001f\u007f]/.test(machine) ||
    !isWellFormed(machine)
  ) {
    throw new InvalidArgumentError(
      `state machine name ${JSON.stringify(machine)} is invalid: use 1-${MAX_MACHINE_NAME_CHARS} printable ` +
        "characters, the key of the nodes' `machines` option",
    );
  }
  return machine;
}

/**
 * The Raft group id the members of one generation of a group use: `<name>:<generation>.<tag>`, or
 * `<name>:<generation>` for a record without a tag (written by an older release). A removed group's name added again
 * gets a new generation, so a replica of the old group (on a node that was down through the removal) can never join
 * the new one. The tag (GroupRecord.tag) tells apart two groups of one name and generation: after the control store
 * lost its records, a name added again may be handed an orphan's very generation, and the two must never exchange a
 * Raft message (docs/fleet.md, "The control store loses its data").
 */
export function raftGroupId(name: string, generation: number, tag?: string): string {
  validateFleetGroupName(name);
  if (!Number.isSafeInteger(generation) || generation < 1) {
    throw new InvalidArgumentError(`a fleet group generation is an integer >= 1, got ${String(generation)}`);
  }
  if (tag === undefined) return `${name}:${generation}`;
  if (!isRaftIdTag(tag)) {
    throw new InvalidArgumentError(`a fleet group tag is 8 characters of [A-Za-z0-9_-], got ${JSON.stringify(tag)}`);
  }
  return `${name}:${generation}.${tag}`;
}

/**
 * The ids computed so far, by record object: every command on a fleet group asks for its record's id (routing),
 * and a record read from the store is never changed (a new read makes a new object), so one check per record does.
 */
const raftIds = new WeakMap<object, string>();

/** The Raft group id of a group record (or of anything with its name, generation and tag; not to be mutated). */
export function groupRaftId(g: {
  readonly name: string;
  readonly generation: number;
  readonly tag?: string | undefined;
}): string {
  let id = raftIds.get(g);
  if (id === undefined || !raftIdMatches(id, g)) {
    id = raftGroupId(g.name, g.generation, g.tag);
    raftIds.set(g, id);
  }
  return id;
}

/** Whether `id` is still the id of `g` (a caller that mutated a plain object it passed before gets a fresh one). */
function raftIdMatches(
  id: string,
  g: { readonly name: string; readonly generation: number; readonly tag?: string | undefined },
): boolean {
  const gen = String(g.generation);
  const head = g.name.length + 1 + gen.length;
  return (
    id.startsWith(g.name) &&
    id.charCodeAt(g.name.length) === 58 /* : */ &&
    id.startsWith(gen, g.name.length + 1) &&
    (g.tag === undefined ? id.length === head : id.length === head + 9 && id.endsWith(g.tag))
  );
}

/**
 * The inverse of raftGroupId; undefined for an id that is not one. The generation (and tag) follow the last `:`,
 * which a tag never holds: `a:5` is group `a` of generation 5, `a:5.Xy3_k9-Q` the same with a tag, `a:5:7` group `a:5`.
 */
export function parseRaftGroupId(id: string): { name: string; generation: number; tag?: string } | undefined {
  const colon = id.lastIndexOf(':');
  if (colon <= 0) return undefined;
  const m = /^([1-9][0-9]{0,15})(?:\.([A-Za-z0-9_-]{8}))?$/.exec(id.slice(colon + 1));
  if (m === null) return undefined;
  const generation = Number(m[1]);
  if (!Number.isSafeInteger(generation)) return undefined;
  const name = id.slice(0, colon);
  return m[2] === undefined ? { name, generation } : { name, generation, tag: m[2] };
}

const RAFT_ID_TAG = /^[A-Za-z0-9_-]{8}$/;

/** Whether `x` is a well-formed Raft id tag (GroupRecord.tag): 8 characters of [A-Za-z0-9_-]. */
export function isRaftIdTag(x: unknown): x is string {
  return typeof x === 'string' && RAFT_ID_TAG.test(x);
}

const TAG_ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';

/**
 * A new Raft id tag (48 random bits): an identity compared for equality only. From `random` ([0, 1)) when given —
 * the simulator's seeded source: a node orders its replicas by id in places (its log's snapshot files), and a seed
 * must replay exactly — else from the system's cryptographic source.
 */
export function newRaftIdTag(random?: () => number): string {
  if (random === undefined) return randomBytes(6).toString('base64url');
  let tag = '';
  for (let i = 0; i < 8; i++) tag += TAG_ALPHABET[Math.floor(random() * 64) & 63];
  return tag;
}

/** The keys of one fleet. */
export class FleetKeys {
  readonly fleet: string;
  readonly root: string;
  readonly nodes: string;
  readonly meta: string;
  readonly groups: string;
  readonly desired: string;
  readonly observed: string;
  readonly claims: string;
  readonly coordinator: string;

  constructor(fleet: string) {
    this.fleet = validateFleetName(fleet);
    this.root = `f/${fleet}/`;
    this.nodes = `${this.root}nodes/`;
    this.meta = `${this.root}meta`;
    this.groups = `${this.root}groups/`;
    this.desired = `${this.root}desired/`;
    this.observed = `${this.root}observed/`;
    this.claims = `${this.root}claims/`;
    this.coordinator = `${this.root}coord/`;
  }

  node(id: string): string {
    return this.nodes + validateNodeId(id);
  }
  group(name: string): string {
    return this.groups + validateFleetGroupName(name);
  }
  desiredOf(name: string): string {
    return this.desired + validateFleetGroupName(name);
  }
  observedOf(name: string): string {
    return this.observed + validateFleetGroupName(name);
  }
  claimOf(name: string): string {
    return this.claims + validateFleetGroupName(name);
  }
}

// ---- records ------------------------------------------------------------------

export type NodeState = 'active' | 'deactivating';

export interface NodeRecord {
  readonly id: string;
  readonly zone: string;
  readonly weight: number;
  /** Where the node's Raft transport listens (host:port or URL). */
  readonly address: string;
  readonly state: NodeState;
  /**
   * Chosen by the node process when it starts (for example its Raft data directory's incarnation), so that a
   * restarted node is told from its previous life even when it reuses its id.
   */
  readonly incarnation: string;
  /**
   * The state machines the node runs (its `machines` option's names, sorted): the coordinator places a group only
   * on nodes that run its machine. Absent from the records of nodes of older releases: unknown, taken as every
   * machine (they were placed everything before, and needed every machine).
   */
  readonly machines?: readonly string[] | undefined;
}

/** Whether a node (by its record) runs state machine `machine`; a record without `machines` is taken to run all. */
export function runsMachine(node: Pick<NodeRecord, 'machines'>, machine: string): boolean {
  return node.machines === undefined || node.machines.includes(machine);
}

/** Check a node's list of state machine names (sorted and deduplicated on the way out). */
export function validateMachineList(machines: unknown, what: string): string[] {
  if (!Array.isArray(machines) || machines.length > MAX_NODE_MACHINES) {
    throw new InvalidArgumentError(`${what}: machines must be an array of at most ${MAX_NODE_MACHINES} names`);
  }
  const out = [...new Set(machines.map((m) => validateMachineName(m)))];
  if (out.length !== machines.length) throw new InvalidArgumentError(`${what}: machines lists a name twice`);
  return out.sort();
}

export interface MetaRecord {
  /** The last generation handed out; never decreases, so a generation is never reused. */
  readonly lastGeneration: number;
  /** Live group records (kept in step with `groups/` by every add and remove). */
  readonly groups: number;
  /**
   * The control plane's identity: random, chosen when the meta record is first written and kept by every rewrite
   * (a record of an older release gets one from the first node that reads it, io.ts ensureControlId, or from its next
   * add or remove). Nodes remember it: finding another one, or
   * no meta record at all, tells them the records their replicas were placed by are gone (the store lost its data,
   * or someone deleted them), so a missing group record no longer means the group was removed (docs/fleet.md, "The
   * control store loses its data").
   */
  readonly id?: string | undefined;
  /**
   * The generations `addGroup` and the unsafe recovery handed out under this record, as sorted, disjoint, inclusive
   * ranges. A group written back after a loss keeps its old generation (io.ts adoptGroup): allowed only for one
   * outside these ranges, so an old group is never confused with one the new records made. Absent (records of an
   * older release): every generation up to `lastGeneration` counts as handed out.
   */
  readonly issued?: readonly (readonly [number, number])[] | undefined;
}

/** The most ranges `issued` keeps; beyond, the two oldest are merged (more counts as handed out: never less safe). */
export const MAX_ISSUED_RANGES = 256;

const CONTROL_ID = /^[A-Za-z0-9_-]{8,64}$/;

/** The ranges of generations handed out under `meta` (see MetaRecord.issued). */
export function issuedOf(meta: MetaRecord): readonly (readonly [number, number])[] {
  return meta.issued ?? (meta.lastGeneration > 0 ? [[1, meta.lastGeneration]] : []);
}

/** Whether `generation` was handed out under `meta` by an add or a recovery. */
export function wasIssued(meta: MetaRecord, generation: number): boolean {
  return issuedOf(meta).some(([from, to]) => generation >= from && generation <= to);
}

/** `issued` with `generation` (the next one handed out: above every range) added. */
export function withIssued(meta: MetaRecord, generation: number): (readonly [number, number])[] {
  const ranges = issuedOf(meta).map((r) => [r[0], r[1]] as [number, number]);
  const last = ranges[ranges.length - 1];
  if (last !== undefined && last[1] === generation - 1) last[1] = generation;
  else ranges.push([generation, generation]);
  if (ranges.length > MAX_ISSUED_RANGES) ranges.splice(0, 2, [ranges[0]![0], ranges[1]![1]]);
  return ranges;
}

/**
 * `issued` with `generation` added wherever it falls (a generation given up on: removeGroup of a claimed name), merged
 * with adjacent ranges; at most MAX_ISSUED_RANGES (the two oldest merged: more counts as handed out, never less safe).
 */
export function withIssuedAnywhere(meta: MetaRecord, generation: number): (readonly [number, number])[] {
  const ranges = issuedOf(meta).map((r) => [r[0], r[1]] as [number, number]);
  if (wasIssued(meta, generation)) return ranges;
  ranges.push([generation, generation]);
  ranges.sort((a, b) => a[0] - b[0]);
  const out: [number, number][] = [];
  for (const r of ranges) {
    const last = out[out.length - 1];
    if (last !== undefined && r[0] <= last[1] + 1) last[1] = Math.max(last[1], r[1]);
    else out.push(r);
  }
  while (out.length > MAX_ISSUED_RANGES) out.splice(0, 2, [out[0]![0], out[1]![1]]);
  return out;
}

/** A new control-plane id for a meta record written for the first time (16 random base64url characters). */
export function newControlId(): string {
  return randomBytes(12).toString('base64url');
}

/**
 * A new group incarnation (GroupRecord.incarnation): drawn like a control id, compared for equality only (the
 * simulator replays a run whatever the ids drawn, as long as no decision depends on more than their equality).
 */
export function newIncarnation(): string {
  return newControlId();
}

/** Whether `x` is a well-formed incarnation (as a control id: 8 to 64 characters of [A-Za-z0-9_-]). */
export function isIncarnation(x: unknown): x is string {
  return typeof x === 'string' && CONTROL_ID.test(x);
}

/**
 * Whether a replica that knows incarnation `held` is of the group whose record has `record`: equal, or either unknown
 * (a record or a node catalog of an older release has none: matching anything keeps what those releases did).
 */
export function sameIncarnation(held: string | undefined, record: string | undefined): boolean {
  return held === undefined || record === undefined || held === record;
}

/** `meta` as the next write stores it: with its id, or a new one for a record that had none (older releases). */
export function withControlId(meta: MetaRecord): MetaRecord & { readonly id: string } {
  return { ...meta, id: meta.id ?? newControlId() };
}

export interface GroupRecord {
  readonly name: string;
  readonly replicas: number;
  /** The state machine's name: a key of every node's `machines`. */
  readonly machine: string;
  readonly generation: number;
  /**
   * Which group this record is (random, drawn by addGroup and by the unsafe recovery's new generation; adoptGroup
   * writes the orphan's own back). A name added again after a loss of the records may get the very generation of an
   * orphan of the same name (the new records never handed it out): the incarnation tells the two apart, so that a
   * replica of one is never taken for the other (finding F2, docs/protocol/specs.md). Absent from the records of
   * older releases: matches any replica (sameIncarnation).
   */
  readonly incarnation?: string | undefined;
  /**
   * Part of the group's Raft group id (raftGroupId): drawn with the generation by addGroup and the unsafe recovery,
   * written back by adoptGroup as the orphan's id has it. Two groups of one name and generation (a name added again
   * after a loss of the records, before its orphan was written back) then have different Raft groups: the new group's
   * replicas never receive the orphan's messages, nor vote in its elections. Absent from the records of older
   * releases: the id has no tag.
   */
  readonly tag?: string | undefined;
  /**
   * Set by the unsafe recovery of a group that lost its majority (docs/fleet.md, "A group that lost its majority"): this generation starts
   * from the state of the replica of generation `seed.generation` on node `seed.node`, not from the state machine's
   * initial state. The coordinator gives the generation's first desired record `initial = [seed.node]`; that node
   * bootstraps the group from its old replica's state, and every other replica joins.
   */
  readonly seed?: GroupSeed | undefined;
}

export interface GroupSeed {
  readonly node: string;
  readonly generation: number;
  /** The old generation's tag (GroupRecord.tag), when it had one: with `generation`, its Raft group id. */
  readonly tag?: string | undefined;
  /** The old generation's founding members (its replica is recovered with them if it is stored but not open). */
  readonly initial: readonly string[];
}

export interface DesiredRecord {
  readonly name: string;
  /** The generation of the group it was placed for: a record of an older generation is stale. */
  readonly generation: number;
  /** Desired members, the desired leader first. */
  readonly members: readonly string[];
  readonly leader: string;
  /** The coordinator's fencing token when it wrote this. */
  readonly token: number;
  /**
   * The members of this generation's first desired record, never changed after: the voters a replica starts with
   * when it creates the group (bootstraps). Only while `version` is 1 may a node bootstrap; once the record was
   * rewritten a new replica always joins empty and is brought in by the leader (docs/fleet.md, "Creating a group").
   */
  readonly initial: readonly string[];
  /** 1 for the first record of the generation, one more at each rewrite. */
  readonly version: number;
}

export type ObservedStatus = 'converged' | 'moving' | 'stuck';

export interface ObservedRecord {
  readonly name: string;
  readonly generation: number;
  /** The node that reported it: the group's leader. */
  readonly reporter: string;
  readonly term: number;
  readonly leader: string;
  readonly voters: readonly string[];
  readonly learners: readonly string[];
  /**
   * The log index of the membership entry that made `voters` and `learners`: a replica that knows a membership at
   * a lower index and is not in this one was removed, and may delete its data (docs/fleet.md, "Leaving a group").
   */
  readonly membershipIndex: number;
  /** The leader's commit index when it reported (the lag's reference). */
  readonly committed: number;
  /** Entries each other member is behind the leader (members the leader has no progress of are left out). */
  readonly lag: Readonly<Record<string, number>>;
  /** The planner's verdict: `stuck` when a majority of the voters is lost (nothing is tried then). */
  readonly status: ObservedStatus;
  /** Human-readable: why it waits or is stuck. */
  readonly detail: string;
}

export function encodeRecord(record: object): string {
  return JSON.stringify({ v: FLEET_PROTOCOL_VERSION, ...record });
}

function parse(key: string, value: string): Record<string, unknown> {
  return parseRecord(key, value, FLEET_PROTOCOL_VERSION, 'fleet control plane');
}

/** The repair advice every decoder's message ends with (writers that check their own input strip it). */
export const REPAIR_ADVICE = '; nothing overwrites it: look at it, then delete it if it is junk';

function corrupt(key: string, what: string): CorruptDataError {
  return new CorruptDataError(`${key}: ${what}${REPAIR_ADVICE}`, {
    key,
    expected: `a fleet control-plane record (docs/fleet.md, "Control-plane records")`,
  });
}

/** The name after `prefix` in `key`, checked to be the one the record names. */
function expectName(key: string, prefix: string, named: string, what: string): void {
  if (key.slice(prefix.length) !== named) throw corrupt(key, `the record names ${what} ${JSON.stringify(named)}`);
}

function nodeList(key: string, rec: Record<string, unknown>, field: string): string[] {
  const v = rec[field];
  if (!Array.isArray(v) || !v.every((n) => typeof n === 'string' && n.length > 0)) {
    throw corrupt(key, `field ${field} must be an array of node ids`);
  }
  const list = v as string[];
  if (new Set(list).size !== list.length) throw corrupt(key, `field ${field} lists a node twice`);
  return list;
}

export function decodeNode(keys: FleetKeys, key: string, value: string): NodeRecord {
  const rec = parse(key, value);
  const id = strField(key, rec, 'id');
  expectName(key, keys.nodes, id, 'node');
  const weight = rec['weight'];
  if (typeof weight !== 'number' || !Number.isFinite(weight) || weight <= 0) {
    throw corrupt(key, 'weight must be a positive number');
  }
  const state = rec['state'];
  if (state !== 'active' && state !== 'deactivating') throw corrupt(key, `unknown state ${JSON.stringify(state)}`);
  const address = strField(key, rec, 'address');
  if (utf8Length(address) > MAX_ADDRESS_BYTES) throw corrupt(key, 'address is too long');
  const node: NodeRecord = {
    id,
    zone: strField(key, rec, 'zone'),
    weight,
    address,
    state,
    incarnation: strField(key, rec, 'incarnation'),
  };
  // Absent in the records of older releases: unknown (every machine), never an error.
  if (rec['machines'] === undefined) return node;
  let machines: string[];
  try {
    machines = validateMachineList(rec['machines'], `node ${id}`);
  } catch (err) {
    throw corrupt(key, `field machines must be a list of state machine names (${(err as Error).message})`);
  }
  return { ...node, machines };
}

export function decodeMeta(key: string, value: string): MetaRecord {
  const rec = parse(key, value);
  const lastGeneration = intField(key, rec, 'lastGeneration');
  const groups = intField(key, rec, 'groups');
  if (groups > MAX_FLEET_GROUPS) throw corrupt(key, `groups ${groups} is above the limit of ${MAX_FLEET_GROUPS}`);
  const id = rec['id'];
  if (id !== undefined && (typeof id !== 'string' || !CONTROL_ID.test(id))) {
    throw corrupt(key, 'field id must be 8 to 64 characters of [A-Za-z0-9_-]');
  }
  const issued = decodeIssued(key, rec['issued'], lastGeneration);
  return {
    lastGeneration,
    groups,
    ...(id !== undefined ? { id: id as string } : {}),
    ...(issued !== undefined ? { issued } : {}),
  };
}

function decodeIssued(key: string, raw: unknown, lastGeneration: number): (readonly [number, number])[] | undefined {
  if (raw === undefined) return undefined;
  const bad = (): CorruptDataError =>
    corrupt(
      key,
      `field issued must be at most ${MAX_ISSUED_RANGES} sorted, disjoint [from, to] ranges within 1..lastGeneration`,
    );
  if (!Array.isArray(raw) || raw.length > MAX_ISSUED_RANGES) throw bad();
  const out: [number, number][] = [];
  let above = 0;
  for (const r of raw) {
    if (!Array.isArray(r) || r.length !== 2) throw bad();
    const [from, to] = r as unknown[];
    if (!Number.isSafeInteger(from) || !Number.isSafeInteger(to)) throw bad();
    const a = from as number;
    const b = to as number;
    if (a <= above || b < a || b > lastGeneration) throw bad();
    out.push([a, b]);
    above = b;
  }
  return out;
}

/** A record's replica count (groups and claims): an integer from 1 to MAX_REPLICAS. */
function replicasField(key: string, rec: Record<string, unknown>): number {
  const replicas = rec['replicas'];
  if (typeof replicas !== 'number' || !Number.isInteger(replicas) || replicas < 1 || replicas > MAX_REPLICAS) {
    throw corrupt(key, `replicas must be an integer from 1 to ${MAX_REPLICAS}`);
  }
  return replicas;
}

/** A record's incarnation (groups and claims): absent, or well formed (isIncarnation). */
function incarnationField(key: string, rec: Record<string, unknown>): string | undefined {
  const incarnation = rec['incarnation'];
  if (incarnation !== undefined && !isIncarnation(incarnation)) {
    throw corrupt(key, 'field incarnation must be 8 to 64 characters of [A-Za-z0-9_-]');
  }
  return incarnation;
}

/** A record's Raft id tag (groups, seeds): absent, or well formed (isRaftIdTag). */
function tagField(key: string, rec: Record<string, unknown>): string | undefined {
  const tag = rec['tag'];
  if (tag !== undefined && !isRaftIdTag(tag)) throw corrupt(key, 'field tag must be 8 characters of [A-Za-z0-9_-]');
  return tag;
}

export function decodeGroup(keys: FleetKeys, key: string, value: string): GroupRecord {
  const rec = parse(key, value);
  const name = strField(key, rec, 'name');
  expectName(key, keys.groups, name, 'group');
  const replicas = replicasField(key, rec);
  const generation = intField(key, rec, 'generation', 1);
  const incarnation = incarnationField(key, rec);
  const tag = tagField(key, rec);
  const group: GroupRecord = {
    name,
    replicas,
    machine: strField(key, rec, 'machine'),
    generation,
    ...(incarnation !== undefined ? { incarnation } : {}),
    ...(tag !== undefined ? { tag } : {}),
  };
  const seedRaw = rec['seed'];
  if (seedRaw === undefined) return group;
  if (seedRaw === null || typeof seedRaw !== 'object' || Array.isArray(seedRaw)) {
    throw corrupt(key, 'seed must be an object { node, generation, initial }');
  }
  const seedRec = seedRaw as Record<string, unknown>;
  const node = strField(key, seedRec, 'node');
  const seedGeneration = intField(key, seedRec, 'generation', 1);
  const initial = nodeList(key, seedRec, 'initial');
  if (node === '' || seedGeneration >= generation || initial.length === 0) {
    throw corrupt(key, 'seed must name a node and an older generation with its founding members');
  }
  const seedTag = tagField(key, seedRec);
  return {
    ...group,
    seed: { node, generation: seedGeneration, ...(seedTag !== undefined ? { tag: seedTag } : {}), initial },
  };
}

/**
 * A name claimed after a loss of the records (docs/fleet.md, "The control store loses its data"): a node found the
 * records gone while it kept a replica of group `name`, which its leader is to write back (io.ts adoptGroup). Until
 * then `addGroup` of the name is refused (FleetGroupExistsError, `restoring`): an application that creates its
 * groups at start-up would otherwise make a new, empty group of the name, and the old one — with every command
 * acknowledged before the loss — could not come back. The write-back deletes the claim; removeGroup gives it up.
 */
export interface ClaimRecord {
  readonly name: string;
  readonly generation: number;
  readonly machine: string;
  readonly replicas: number;
  readonly incarnation?: string | undefined;
  /** The node that wrote it (one that keeps a replica). */
  readonly node: string;
}

export function decodeClaim(keys: FleetKeys, key: string, value: string): ClaimRecord {
  const rec = parse(key, value);
  const name = strField(key, rec, 'name');
  expectName(key, keys.claims, name, 'group');
  const replicas = replicasField(key, rec);
  const incarnation = incarnationField(key, rec);
  const node = strField(key, rec, 'node');
  if (node === '') throw corrupt(key, 'field node must name a node');
  return {
    name,
    generation: intField(key, rec, 'generation', 1),
    machine: strField(key, rec, 'machine'),
    replicas,
    ...(incarnation !== undefined ? { incarnation } : {}),
    node,
  };
}

export function decodeDesired(keys: FleetKeys, key: string, value: string): DesiredRecord {
  const rec = parse(key, value);
  const name = strField(key, rec, 'name');
  expectName(key, keys.desired, name, 'group');
  const members = nodeList(key, rec, 'members');
  const leader = strField(key, rec, 'leader');
  if (members.length === 0 || !members.includes(leader)) {
    throw corrupt(key, 'the desired leader must be one of the (non-empty) desired members');
  }
  const initial = nodeList(key, rec, 'initial');
  if (initial.length === 0) throw corrupt(key, 'the initial members must not be empty');
  return {
    name,
    generation: intField(key, rec, 'generation', 1),
    members,
    leader,
    token: intField(key, rec, 'token'),
    initial,
    version: intField(key, rec, 'version', 1),
  };
}

export function decodeObserved(keys: FleetKeys, key: string, value: string): ObservedRecord {
  const rec = parse(key, value);
  const name = strField(key, rec, 'name');
  expectName(key, keys.observed, name, 'group');
  const status = rec['status'];
  if (status !== 'converged' && status !== 'moving' && status !== 'stuck') {
    throw corrupt(key, `unknown status ${JSON.stringify(status)}`);
  }
  const lagRaw = rec['lag'];
  if (lagRaw === null || typeof lagRaw !== 'object' || Array.isArray(lagRaw))
    throw corrupt(key, 'lag must be an object');
  const lag: Record<string, number> = {};
  for (const [node, n] of Object.entries(lagRaw as Record<string, unknown>)) {
    if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0) {
      throw corrupt(key, `lag of ${JSON.stringify(node)} must be an integer >= 0`);
    }
    lag[node] = n;
  }
  return {
    name,
    generation: intField(key, rec, 'generation', 1),
    reporter: strField(key, rec, 'reporter'),
    term: intField(key, rec, 'term'),
    leader: strField(key, rec, 'leader'),
    voters: nodeList(key, rec, 'voters'),
    learners: nodeList(key, rec, 'learners'),
    membershipIndex: intField(key, rec, 'membershipIndex'),
    committed: intField(key, rec, 'committed'),
    lag,
    status,
    detail: strField(key, rec, 'detail'),
  };
}
