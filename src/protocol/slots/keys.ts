/**
 * Key layout and record codecs of the slots protocol (docs/protocol/slots.md).
 * Everything read from the store is untrusted: decoders return a typed
 * record or throw CorruptDataError naming the key.
 */
import { intField, parseRecord, strField } from '../records.js';
import { CorruptDataError, InvalidArgumentError } from '../../errors.js';
import { checkSlotCount } from '../../placement/slot-hash.js';
import { MAX_REPLICAS } from '../../placement/slots.js';
import { validateName, validateNodeId } from '../names.js';

export const SLOTS_PROTOCOL_VERSION = 1;
/** Slots per plan chunk: a chunk of 1024 slots with R = 3 is a few KB, far below the 256 KiB value limit. */
export const PLAN_CHUNK_SLOTS = 1024;
/** Site addresses are metadata for routing (host:port, URL), not a payload. */
export const MAX_ADDRESS_BYTES = 512;

export interface SlotsConfig {
  readonly slotCount: number;
  readonly replicas: number;
  readonly minSites: number;
}

export function validateSlotsConfig(c: SlotsConfig): SlotsConfig {
  checkSlotCount(c.slotCount);
  if (!Number.isInteger(c.replicas) || c.replicas < 1 || c.replicas > MAX_REPLICAS) {
    throw new InvalidArgumentError(`replicas must be an integer from 1 to ${MAX_REPLICAS}, got ${String(c.replicas)}`);
  }
  if (!Number.isInteger(c.minSites) || c.minSites < 1 || c.minSites > 65535) {
    throw new InvalidArgumentError(`minSites must be an integer from 1 to 65535, got ${String(c.minSites)}`);
  }
  return c;
}

/** The keys of one slots cluster. */
export class SlotKeys {
  readonly root: string;
  readonly config: string;
  readonly sites: string;
  readonly coordinator: string;
  readonly plan: string;
  readonly ready: string;
  readonly primaries: string;
  /**
   * `held/<site>/<chunk>`: which primary locks of the chunk the site holds, with their epochs, written in the same
   * transaction as the locks themselves (so always in step with them) and attached to the same session. Sites read
   * these summaries instead of every lock: at 16384 slots a range over the locks cost a Redis server ~250 ms.
   */
  readonly held: string;
  /**
   * Rewritten by every site's registration: a release compares its mod revision, so that a site that joined
   * after the release's check was read makes the release read again (Quint finding S2).
   */
  readonly joins: string;
  /**
   * Written by a site about to release: `ask` names the replicas its release would count. Each of them answers by
   * rewriting its ready key (so that key's mod revision passes the probe's), which only a running site does; the
   * release then counts only the replicas that answered — not a site that crashed and whose session has not expired
   * yet (issue 12 item 10).
   */
  readonly probes: string;

  constructor(cluster: string) {
    validateName(cluster, 'cluster name');
    this.root = `s/${cluster}/`;
    this.config = `${this.root}config`;
    this.sites = `${this.root}sites/`;
    this.coordinator = `${this.root}coord/`;
    this.plan = `${this.root}plan/`;
    this.ready = `${this.root}ready/`;
    this.primaries = `${this.root}primary/`;
    this.held = `${this.root}held/`;
    this.joins = `${this.root}joins`;
    this.probes = `${this.root}probe/`;
  }

  site(id: string): string {
    return this.sites + validateNodeId(id);
  }
  /** One probe key per releasing site: concurrent releases do not overwrite each other's questions. */
  probeOf(id: string): string {
    return this.probes + id;
  }
  readyOf(id: string): string {
    return this.ready + id;
  }
  /** Fixed-width chunk numbers keep the keys in slot order in a range read. */
  planChunk(chunk: number): string {
    return `${this.plan}${String(chunk).padStart(3, '0')}`;
  }
  primary(slot: number): string {
    return `${this.primaries}${String(slot).padStart(5, '0')}`;
  }
  slotOfPrimaryKey(key: string): number | undefined {
    if (!key.startsWith(this.primaries)) return undefined;
    const rest = key.slice(this.primaries.length);
    if (!/^\d{5}$/.test(rest)) return undefined;
    return Number(rest);
  }
  heldChunk(site: string, chunk: number): string {
    return `${this.held}${site}/${String(chunk).padStart(3, '0')}`;
  }
  /** The site and chunk of a `held/` key, or undefined for a key that is not one. */
  ofHeldKey(key: string): { site: string; chunk: number } | undefined {
    if (!key.startsWith(this.held)) return undefined;
    const m = /^([^/]{1,128})\/(\d{3})$/.exec(key.slice(this.held.length));
    return m === null ? undefined : { site: m[1]!, chunk: Number(m[2]) };
  }
  chunkOfPlanKey(key: string): number | undefined {
    if (!key.startsWith(this.plan)) return undefined;
    const rest = key.slice(this.plan.length);
    if (!/^\d{3}$/.test(rest)) return undefined;
    return Number(rest);
  }
}

export function chunkCount(slotCount: number): number {
  return Math.ceil(slotCount / PLAN_CHUNK_SLOTS);
}

// ---- records ------------------------------------------------------------------

export interface SiteRecord {
  readonly id: string;
  readonly zone: string;
  readonly weight: number;
  readonly address: string | undefined;
  readonly sessionId: string;
}

/** The plan of one slot: who should hold it now, and who should be primary. */
export interface SlotAssignment {
  /** Target replicas first (target primary first), then old replicas kept until the new ones are ready. */
  readonly assigned: readonly string[];
  readonly primary: string | undefined;
}

export interface PlanChunk {
  readonly generation: number;
  /** PLAN_CHUNK_SLOTS entries (fewer in the last chunk). */
  readonly slots: readonly SlotAssignment[];
}

export interface PrimaryRecord {
  readonly site: string;
}

function parse(key: string, value: string): Record<string, unknown> {
  return parseRecord(key, value, SLOTS_PROTOCOL_VERSION, 'slots protocol');
}

const int = intField;
const str = strField;

export function encodeConfig(c: SlotsConfig): string {
  return JSON.stringify({ v: SLOTS_PROTOCOL_VERSION, ...c });
}

export function decodeConfig(key: string, value: string): SlotsConfig {
  const rec = parse(key, value);
  const c = {
    slotCount: int(key, rec, 'slotCount', 1),
    replicas: int(key, rec, 'replicas', 1),
    minSites: int(key, rec, 'minSites', 1),
  };
  try {
    return validateSlotsConfig(c);
  } catch (cause) {
    throw new CorruptDataError(`${key}: invalid cluster configuration`, { key, cause });
  }
}

export function encodeSite(r: Omit<SiteRecord, 'id'>): string {
  return JSON.stringify({
    v: SLOTS_PROTOCOL_VERSION,
    zone: r.zone,
    weight: r.weight,
    address: r.address,
    sessionId: r.sessionId,
  });
}

export function decodeSite(key: string, id: string, value: string): SiteRecord {
  const rec = parse(key, value);
  const weight = rec['weight'];
  if (typeof weight !== 'number' || !Number.isFinite(weight) || weight <= 0) {
    throw new CorruptDataError(`${key}: weight must be a positive number`, { key });
  }
  const address = rec['address'];
  if (address !== undefined && typeof address !== 'string') {
    throw new CorruptDataError(`${key}: address must be a string`, { key });
  }
  return { id, zone: str(key, rec, 'zone'), weight, address, sessionId: str(key, rec, 'sessionId') };
}

/**
 * A plan chunk as JSON: a site table and, per slot, indices into it —
 * `a` the assigned lists, `p` the primary index (-1: none). Compact and still
 * readable with jq.
 */
export function encodePlanChunk(generation: number, slots: readonly SlotAssignment[]): string {
  const sites: string[] = [];
  const index = new Map<string, number>();
  const idx = (id: string): number => {
    let i = index.get(id);
    if (i === undefined) {
      i = sites.length;
      sites.push(id);
      index.set(id, i);
    }
    return i;
  };
  const a = slots.map((s) => s.assigned.map(idx));
  const p = slots.map((s) => (s.primary === undefined ? -1 : idx(s.primary)));
  return JSON.stringify({ v: SLOTS_PROTOCOL_VERSION, generation, sites, a, p });
}

export function decodePlanChunk(key: string, value: string, expectedSlots: number): PlanChunk {
  const rec = parse(key, value);
  const generation = int(key, rec, 'generation');
  const sites = rec['sites'];
  const a = rec['a'];
  const p = rec['p'];
  if (!Array.isArray(sites) || !sites.every((s) => typeof s === 'string')) {
    throw new CorruptDataError(`${key}: sites must be a list of strings`, { key });
  }
  if (!Array.isArray(a) || !Array.isArray(p) || a.length !== expectedSlots || p.length !== expectedSlots) {
    throw new CorruptDataError(`${key}: expected ${expectedSlots} slots`, { key });
  }
  const site = (i: unknown): string => {
    if (typeof i !== 'number' || !Number.isInteger(i) || i < 0 || i >= sites.length) {
      throw new CorruptDataError(`${key}: site index ${JSON.stringify(i)} out of range`, { key });
    }
    return sites[i] as string;
  };
  const slots: SlotAssignment[] = [];
  for (let s = 0; s < expectedSlots; s++) {
    const list = a[s] as unknown;
    if (!Array.isArray(list)) throw new CorruptDataError(`${key}: slot ${s}: assigned must be a list`, { key });
    const pi = p[s] as unknown;
    slots.push({ assigned: list.map(site), primary: pi === -1 ? undefined : site(pi) });
  }
  return { generation, slots };
}

export function encodePrimary(site: string): string {
  return JSON.stringify({ v: SLOTS_PROTOCOL_VERSION, site });
}

export function decodePrimary(key: string, value: string): PrimaryRecord {
  return { site: str(key, parse(key, value), 'site') };
}

// ---- held summaries --------------------------------------------------------------

/**
 * One chunk of a site's held primary locks: offset in the chunk → epoch. Epoch 0 stands for "the mod revision of
 * this summary key": a take-over writes the locks and the summary in one transaction, before it knows the
 * revision, which is then both the locks' create revision (their epoch) and the summary's mod revision.
 */
export type HeldChunk = ReadonlyMap<number, number>;

/** `{"v":1,"g":[[epoch, offset, offset, …], …]}`: offsets grouped by epoch (a take-over batch shares one). */
export function encodeHeld(held: HeldChunk): string {
  const groups = new Map<number, number[]>();
  for (const [offset, epoch] of held) {
    const g = groups.get(epoch);
    if (g === undefined) groups.set(epoch, [offset]);
    else g.push(offset);
  }
  const g = [...groups].map(([epoch, offsets]) => [epoch, ...offsets.sort((a, b) => a - b)]);
  return JSON.stringify({ v: SLOTS_PROTOCOL_VERSION, g });
}

/** Decode a summary; epoch 0 entries get `modRevision`. */
export function decodeHeld(key: string, value: string, chunkSlots: number, modRevision: number): Map<number, number> {
  const rec = parse(key, value);
  const g = rec['g'];
  if (!Array.isArray(g)) throw new CorruptDataError(`${key}: g must be a list of [epoch, offsets…] groups`, { key });
  const out = new Map<number, number>();
  for (const group of g as unknown[]) {
    if (!Array.isArray(group) || group.length < 2) {
      throw new CorruptDataError(`${key}: a group must be [epoch, offset, …]`, { key });
    }
    const [epoch, ...offsets] = group as unknown[];
    if (typeof epoch !== 'number' || !Number.isSafeInteger(epoch) || epoch < 0) {
      throw new CorruptDataError(`${key}: epoch ${JSON.stringify(epoch)} is not a revision`, { key });
    }
    for (const o of offsets) {
      if (typeof o !== 'number' || !Number.isInteger(o) || o < 0 || o >= chunkSlots || out.has(o)) {
        throw new CorruptDataError(`${key}: offset ${JSON.stringify(o)} is out of range or repeated`, { key });
      }
      out.set(o, epoch === 0 ? modRevision : epoch);
    }
  }
  return out;
}

// ---- ready bitmaps --------------------------------------------------------------

/** Which slots a site has marked ready: one bit per slot. */
export type ReadyBits = Uint8Array;

export function emptyReady(slotCount: number): ReadyBits {
  return new Uint8Array(Math.ceil(slotCount / 8));
}
export function hasReady(bits: ReadyBits | undefined, slot: number): boolean {
  return bits !== undefined && ((bits[slot >> 3] ?? 0) & (1 << (slot & 7))) !== 0;
}
export function setReady(bits: ReadyBits, slot: number, on: boolean): void {
  const i = slot >> 3;
  const m = 1 << (slot & 7);
  bits[i] = on ? bits[i]! | m : bits[i]! & ~m;
}
export function readyCount(bits: ReadyBits): number {
  let n = 0;
  for (const b of bits) {
    let x = b;
    while (x !== 0) {
      x &= x - 1;
      n++;
    }
  }
  return n;
}

/** A release's liveness probe (see SlotKeys.probes). */
export interface ProbeRecord {
  readonly site: string;
  readonly ask: readonly string[];
}

export function encodeProbe(r: ProbeRecord): string {
  return JSON.stringify({ v: SLOTS_PROTOCOL_VERSION, site: r.site, ask: r.ask });
}

export function decodeProbe(key: string, value: string): ProbeRecord {
  const rec = parse(key, value);
  const ask = rec['ask'];
  if (!Array.isArray(ask) || ask.some((x) => typeof x !== 'string')) {
    throw new CorruptDataError(`${key}: ask must be a list of node ids`, { key });
  }
  return { site: str(key, rec, 'site'), ask: ask as string[] };
}

export function encodeReady(bits: ReadyBits): string {
  return JSON.stringify({ v: SLOTS_PROTOCOL_VERSION, bits: Buffer.from(bits).toString('base64') });
}

export function decodeReady(key: string, value: string, slotCount: number): ReadyBits {
  const rec = parse(key, value);
  const b = str(key, rec, 'bits');
  const bytes = Buffer.from(b, 'base64');
  if (bytes.length !== Math.ceil(slotCount / 8)) {
    throw new CorruptDataError(`${key}: ready bitmap has ${bytes.length} bytes for ${slotCount} slots`, { key });
  }
  return new Uint8Array(bytes);
}
