/**
 * Slot placement: a fixed number of slots spread over sites, `R` replicas per
 * slot in distinct zones where possible, one primary per slot, primaries
 * balanced by weight. Pure: no clock, no IO, no randomness.
 *
 * Algorithm (docs/slots.md has the reasoning):
 *
 * 1. Replicas — weighted rendezvous hashing, the same score as `rankNodes`:
 *    slot `s` is keyed by `hash32(String(s))`, site `i` by `hash32(id)`, and
 *    score(s, i) = −weight / ln(u) with u from `combine32` of the two. The
 *    replicas of a slot are the first R sites of the zone-spread greedy over
 *    sites sorted by (score desc, id asc): the best site of each zone first
 *    (in score order), then, if there are fewer zones than R, the best of the
 *    rest. So the set is exactly `rankNodes(String(s), sites, R, { spreadZones: true })`,
 *    computed without a sort: each slot keeps only its R best candidates
 *    (zone champions), and a cheap upper bound on the score (−ln u ≥ 1 − u)
 *    skips the logarithm for sites that cannot enter. A site's replica count
 *    is only statistically balanced, but it depends on nothing but the site
 *    list, and a join or leave moves only the slots whose top R it changes
 *    (about slotCount × R / N).
 *
 * 2. Primaries — a balancing pass (balance.ts, shared with fleet placement), not "the top-ranked replica" (which, like
 *    "the oldest replica", lets primaries pile up): each site may be primary
 *    for between the floor and the ceiling of its weighted share of
 *    slotCount. Each slot starts with its previous primary if that site is
 *    still a replica (when `previous` is given), else its top-ranked replica
 *    (weighted rendezvous, so already balanced up to noise). Then shortest
 *    chains of primary hand-overs ("A is primary of a slot of which B is a
 *    replica": augmenting paths of a b-matching, found by breadth-first
 *    search) move the excess of sites above their ceiling to sites below it,
 *    and fill sites below their floor. When the replica sets allow it, every
 *    site ends within [floor, ceiling] of its share; when they do not (a site
 *    with more weight than 1/R of the total, or uneven zones), what is left
 *    is what no chain of hand-overs could fix. The pass moves only what
 *    balance requires, so with `previous` a join or leave changes about
 *    slotCount / N primaries. Everything iterates in site-id and slot order:
 *    the result is a function of the input only.
 */
import { InvalidArgumentError } from '../errors.js';
import type { PlacementNode } from './index.js';
import { balanceLeaders, leaderBounds, uniformRows } from './balance.js';
import { hash32 } from './hash.js';
import { SiteScanner } from './scan.js';
import { checkSlotCount } from './slot-hash.js';

/** A site that can hold slots. */

export interface SlotPlacementInput {
  readonly sites: readonly PlacementNode[];
  /** 1 to 65536 (see slotForKey). */
  readonly slotCount: number;
  /** Replicas per slot, R ≥ 1; fewer are placed while there are fewer sites. */
  readonly replicas: number;
  /**
   * The placement in force, if any. Replica sets never depend on it; primaries do: a slot keeps its primary
   * while that site is still one of its replicas and balance allows, so fewer primaries change.
   */
  readonly previous?: SlotPlacement | undefined;
}

/**
 * Which sites hold which slot. Treat as immutable: the typed array is shared with routing tables built from it.
 */
export interface SlotPlacement {
  readonly slotCount: number;
  /** Replicas per slot actually placed: min(requestedReplicas, number of sites). */
  readonly replicas: number;
  readonly requestedReplicas: number;
  /** Site ids, sorted; `table` holds indices into this list. */
  readonly siteIds: readonly string[];
  /** Zone of each site, aligned with `siteIds`. */
  readonly siteZones: readonly string[];
  /** Weight of each site, aligned with `siteIds`. */
  readonly siteWeights: readonly number[];
  /** slotCount × replicas site indices: row `s` is [primary, secondaries in rendezvous rank order]. */
  readonly table: Uint16Array;
}

/** Most replicas per slot we accept (a bound on per-slot work, far above any sensible R). */
export const MAX_REPLICAS = 64;
/** Most sites: indices are stored as 16-bit numbers. */
export const MAX_SITES = 65535;

export interface Site {
  readonly id: string;
  readonly zone: string;
  readonly weight: number;
}

/**
 * Validated sites sorted by id. `what` and `noun` name the caller in messages ('fleet placement', 'node'): the fleet
 * validates its nodes with the same rules.
 */
export function normaliseSites(sites: readonly PlacementNode[], what = 'slot placement', noun = 'site'): Site[] {
  if (!Array.isArray(sites)) throw new InvalidArgumentError(`${what}: ${noun}s must be an array`);
  if (sites.length > MAX_SITES) {
    throw new InvalidArgumentError(`${what}: ${sites.length} ${noun}s; at most ${MAX_SITES} are supported`);
  }
  const seen = new Set<string>();
  const out: Site[] = [];
  for (const s of sites) {
    if (typeof s?.id !== 'string' || s.id.length === 0) {
      throw new InvalidArgumentError(`${what}: ${noun} id must be a non-empty string`);
    }
    if (seen.has(s.id)) throw new InvalidArgumentError(`${what}: duplicate ${noun} id ${JSON.stringify(s.id)}`);
    seen.add(s.id);
    const weight = s.weight ?? 1;
    if (typeof weight !== 'number' || !Number.isFinite(weight) || weight <= 0) {
      throw new InvalidArgumentError(`${what}: ${noun} ${s.id} has weight ${String(weight)}; use a finite number > 0`);
    }
    const zone = s.zone ?? '';
    if (typeof zone !== 'string') throw new InvalidArgumentError(`${what}: ${noun} ${s.id} has a non-string zone`);
    out.push({ id: s.id, zone, weight });
  }
  // Sorted by id (UTF-16 code unit order, as JavaScript compares strings): input order never matters.
  out.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  return out;
}

export function checkReplicas(replicas: number): void {
  if (!Number.isInteger(replicas) || replicas < 1 || replicas > MAX_REPLICAS) {
    throw new InvalidArgumentError(`replicas is ${String(replicas)}; use an integer from 1 to ${MAX_REPLICAS}`);
  }
}

/**
 * `hash32(String(n))` without building the string: FNV-1a over the decimal digits, then fmix32 (as hash32 does).
 */
function hashDecimal(n: number): number {
  let h = 0x811c9dc5;
  let div = 1;
  while (div * 10 <= n) div *= 10;
  for (; div >= 1; div = Math.floor(div / 10)) {
    const digit = Math.floor(n / div) % 10;
    h = Math.imul(h ^ (0x30 + digit), 0x01000193);
  }
  h >>>= 0;
  // fmix32, inlined: this runs once per slot.
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** The rendezvous key of slot `s` (exported for tests and other implementations). */
export function slotRendezvousHash(slot: number): number {
  return hashDecimal(slot);
}

const INV_TWO_32 = 1 / 4294967296;

// Slot rendezvous hashes depend on nothing but the slot number: computed once, shared by every placement.
let slotHashes = new Uint32Array(0);
function slotHashTable(slotCount: number): Uint32Array {
  if (slotHashes.length < slotCount) {
    const t = new Uint32Array(slotCount);
    t.set(slotHashes);
    for (let s = slotHashes.length; s < slotCount; s++) t[s] = hashDecimal(s);
    slotHashes = t;
  }
  return slotHashes;
}

/** One zone (or zones not used): the plain top R. */
const PLAIN = 0;
/** At least R zones: the R best zone champions. */
const SPREAD = 1;
/** 2 ≤ zones < R: every zone's champion, then the best of the rest from the overall top R. */
const MIXED = 2;

/**
 * The scratch state of one slot's selection: typed arrays reused for every slot (no per-slot allocation).
 * Candidates are kept best first; equal scores keep the earlier (smaller id) site first, as the strict `>`
 * comparisons below do — the same order as a stable sort by (score desc, id asc).
 */
class Selector {
  readonly candSite: Int32Array;
  readonly candScore: Float64Array;
  readonly candZone: Int32Array;
  readonly champSite: Int32Array;
  readonly champScore: Float64Array;
  /** SPREAD: best score seen in each zone during the current slot (valid where zoneStamp equals stamp). */
  readonly zoneBest: Float64Array;
  readonly zoneStamp: Int32Array;
  stamp = 0;
  len = 0;

  constructor(
    readonly R: number,
    readonly Z: number,
    readonly mode: number,
  ) {
    this.candSite = new Int32Array(R);
    this.candScore = new Float64Array(R);
    this.candZone = new Int32Array(R);
    this.champSite = new Int32Array(mode === MIXED ? Z : 0);
    this.champScore = new Float64Array(mode === MIXED ? Z : 0);
    this.zoneBest = new Float64Array(mode === SPREAD ? Z : 0);
    this.zoneStamp = new Int32Array(mode === SPREAD ? Z : 0);
  }

  reset(): void {
    this.len = 0;
    this.stamp++;
    if (this.mode === MIXED) {
      this.champScore.fill(-Infinity);
      this.champSite.fill(-1);
    }
  }

  /** Whether the pass found everything it needs (with a seeded cut it may not have: then rerun without). */
  complete(): boolean {
    if (this.len < this.R) return false;
    if (this.mode === MIXED) for (let z = 0; z < this.Z; z++) if (this.champSite[z]! < 0) return false;
    return true;
  }

  /** A site scoring ≤ the returned cut cannot change the outcome (−Infinity while anything is missing). */
  cut(): number {
    const { R, candScore, champScore } = this;
    let cut = this.len < R ? -Infinity : candScore[R - 1]!;
    // Fewer zones than R: a site below the top R may still be its zone's best.
    if (this.mode === MIXED) for (let z = 0; z < this.Z; z++) if (champScore[z]! < cut) cut = champScore[z]!;
    return cut;
  }

  /**
   * Offer site `i` of zone `z` that scored above `cut`; returns the new cut. With one candidate per zone, a site
   * that does not beat its zone's best so far cannot be chosen.
   */
  offer(i: number, z: number, score: number, cut: number): number {
    if (this.mode === SPREAD) {
      if (this.zoneStamp[z] === this.stamp && score <= this.zoneBest[z]!) return cut;
      this.zoneStamp[z] = this.stamp;
      this.zoneBest[z] = score;
    }
    const c = this.insert(i, z, score);
    return c > cut ? c : cut;
  }

  /** Consider site `i` of zone `z`; returns the new cut. */
  insert(i: number, z: number, score: number): number {
    const { R, candSite, candScore, candZone, mode } = this;
    if (mode === MIXED && score > this.champScore[z]!) {
      this.champScore[z] = score;
      this.champSite[z] = i;
    }
    let len = this.len;
    let j = -1;
    if (mode === SPREAD) {
      for (let k = 0; k < len; k++) {
        if (candZone[k] === z) {
          j = k;
          break;
        }
      }
      // Its zone is in the list already: it can only replace that zone's candidate.
      if (j >= 0 && score <= candScore[j]!) return this.cut();
    }
    if (j < 0) {
      if (len < R) j = len++;
      else if (score > candScore[R - 1]!) j = R - 1;
    }
    if (j >= 0) {
      while (j > 0 && score > candScore[j - 1]!) {
        candSite[j] = candSite[j - 1]!;
        candScore[j] = candScore[j - 1]!;
        candZone[j] = candZone[j - 1]!;
        j--;
      }
      candSite[j] = i;
      candScore[j] = score;
      candZone[j] = z;
    }
    this.len = len;
    return this.cut();
  }
}

/**
 * Equal weights: the score −w/ln(u) is strictly increasing in the 32-bit hash, so the hash itself ranks the sites
 * and no logarithm is needed; (x ^ 0x80000000) | 0 orders like the unsigned hash and stays a small integer.
 * `seed` is a starting cut (see rankReplicas). combine32(h, siteHash) = fmix32(h ^ siteMix), inlined.
 */
function selectUniform(sel: Selector, h: number, siteMix: Int32Array, zoneOf: Int32Array, seed: number): void {
  sel.reset();
  let cut = seed;
  const n = siteMix.length;
  for (let i = 0; i < n; i++) {
    let x = h ^ siteMix[i]!;
    x ^= x >>> 16;
    x = Math.imul(x, 0x85ebca6b);
    x ^= x >>> 13;
    x = Math.imul(x, 0xc2b2ae35);
    x ^= x >>> 16;
    const score = (x ^ 0x80000000) | 0;
    if (score <= cut) continue;
    const z = zoneOf[i]!;
    cut = sel.offer(i, z, score, cut);
  }
}

/**
 * Weighted scores, exactly as rendezvousScore computes them. `gate[i]`: an integer lower bound on the (signed-order)
 * hash site i needs to score above `seed` (see seedGates): most sites fail it with one integer comparison, before
 * any floating-point work.
 */
function selectWeighted(
  sel: Selector,
  h: number,
  siteMix: Int32Array,
  weight: Float64Array,
  zoneOf: Int32Array,
  seed: number,
  gate: Int32Array,
): void {
  sel.reset();
  let cut = seed;
  const spread = sel.mode === SPREAD;
  const { zoneBest, zoneStamp, stamp } = sel;
  const n = siteMix.length;
  for (let i = 0; i < n; i++) {
    let x = h ^ siteMix[i]!;
    x ^= x >>> 16;
    x = Math.imul(x, 0x85ebca6b);
    x ^= x >>> 13;
    x = Math.imul(x, 0xc2b2ae35);
    x ^= x >>> 16;
    if (((x ^ 0x80000000) | 0) < gate[i]!) continue;
    // (c + 0.5) / 2^32 as rendezvousScore has it; multiplying by 2^−32 is exact.
    const u = ((x >>> 0) + 0.5) * INV_TWO_32;
    const w = weight[i]!;
    // score = w / −ln(u) < w / (1 − u), since −ln(u) > 1 − u: skip the logarithm when even the bound is ≤ cut.
    if (w <= cut * (1 - u)) continue;
    const z = zoneOf[i]!;
    if (spread && zoneStamp[z] === stamp && w <= zoneBest[z]! * (1 - u)) continue;
    const score = -w / Math.log(u);
    // The bound let it through; the exact score must still beat the cut (which may be the seed: a site below
    // it must not enter, or a pass that looks complete could hold the wrong sites).
    if (score <= cut) continue;
    cut = sel.offer(i, z, score, cut);
  }
}

/**
 * A starting cut that about `expected` sites exceed per slot: the weighted score T with
 * Σ P(score_i > T) = Σ (1 − e^(−w_i/T)) = expected, by bisection. −Infinity when that is all sites anyway.
 */
function weightedSeed(weight: Float64Array, expected: number): number {
  if (expected >= weight.length) return -Infinity;
  let lo = 1e-300;
  let hi = 1e300;
  for (let k = 0; k < 200 && hi / lo > 1 + 1e-9; k++) {
    const mid = Math.sqrt(lo * hi);
    let above = 0;
    for (let i = 0; i < weight.length; i++) above += -Math.expm1(-weight[i]! / mid);
    if (above > expected) lo = mid;
    else hi = mid;
  }
  return lo;
}

/**
 * selectUniform over the sites a SiteScanner let through (in site order, scores above the seed): the same
 * decisions on the same sites, so the same result.
 */
function selectUniformFrom(
  sel: Selector,
  idx: Int32Array,
  val: Int32Array,
  count: number,
  zoneOf: Int32Array,
  seed: number,
): void {
  sel.reset();
  let cut = seed;
  for (let k = 0; k < count; k++) {
    const score = val[k]!;
    if (score <= cut) continue;
    const i = idx[k]!;
    const z = zoneOf[i]!;
    cut = sel.offer(i, z, score, cut);
  }
}

/** selectWeighted over the sites a SiteScanner let through (their gates passed): see selectUniformFrom. */
function selectWeightedFrom(
  sel: Selector,
  idx: Int32Array,
  val: Int32Array,
  count: number,
  weight: Float64Array,
  zoneOf: Int32Array,
  seed: number,
): void {
  sel.reset();
  let cut = seed;
  const spread = sel.mode === SPREAD;
  const { zoneBest, zoneStamp, stamp } = sel;
  for (let k = 0; k < count; k++) {
    const i = idx[k]!;
    const x = (val[k]! ^ 0x80000000) >>> 0;
    const u = (x + 0.5) * INV_TWO_32;
    const w = weight[i]!;
    if (w <= cut * (1 - u)) continue;
    const z = zoneOf[i]!;
    if (spread && zoneStamp[z] === stamp && w <= zoneBest[z]! * (1 - u)) continue;
    const score = -w / Math.log(u);
    if (score <= cut) continue;
    cut = sel.offer(i, z, score, cut);
  }
}

/**
 * Per site, the smallest signed-order hash (x ^ 2^31) that can score above `seed`: score = w / −ln(u) > seed ⇔
 * u > e^(−w/seed), u = (x + 0.5) / 2^32. Rounded down with a margin far above the error of exp, so a site that
 * could score above the seed always passes (the exact score is compared after); −2^31 (everything passes) without a
 * seed.
 */
function seedGates(weight: Float64Array, seed: number): Int32Array {
  const gate = new Int32Array(weight.length).fill(-2147483648);
  if (!(seed > 0) || !Number.isFinite(seed)) return gate;
  for (let i = 0; i < weight.length; i++) {
    const x = Math.floor(4294967296 * Math.exp(-weight[i]! / seed) * (1 - 1e-9)) - 2;
    gate[i] = Math.max(-2147483648, Math.min(2147483647, x - 2147483648));
  }
  return gate;
}

/**
 * Fill `rank` (keyCount × R) with each key's replicas in zone-spread rendezvous order; key `s` is `hashes[s]`
 * (`hash32` of its name: `hash32(String(slot))` for slots, the group name for the fleet). The result equals
 * `rankNodes(name, sites, R, { spreadZones: true })` for every key (unit tests check it).
 *
 * This loop is the whole cost of a placement (slotCount × sites hashes), so it is written for speed: no
 * allocation; each slot keeps only its few best candidates; a site scoring at or below a cut is dropped before
 * anything else is done with it. The cut starts at a seed that only ~4R sites per slot exceed, which halves the
 * candidate updates; a slot whose seeded pass misses something (fewer than R above the seed, or a zone without a
 * champion) is simply redone without the seed, so the seed changes the speed, never the result. Where the seed
 * misses often (very uneven zones), it is switched off.
 */
export function rankReplicas(
  sites: readonly Site[],
  hashes: Uint32Array,
  keyCount: number,
  R: number,
  rank: Uint16Array,
): void {
  const N = sites.length;
  // combine32(a, b) = fmix32(a ^ imul(b, 0x9e3779b1)): the site half is fixed per site.
  const siteMix = new Int32Array(N);
  const weight = new Float64Array(N);
  const zoneOf = new Int32Array(N);
  const zoneIndex = new Map<string, number>();
  let uniform = true;
  for (let i = 0; i < N; i++) {
    const s = sites[i]!;
    siteMix[i] = Math.imul(hash32(s.id), 0x9e3779b1);
    weight[i] = s.weight;
    if (s.weight !== sites[0]!.weight) uniform = false;
    let z = zoneIndex.get(s.zone);
    if (z === undefined) {
      z = zoneIndex.size;
      zoneIndex.set(s.zone, z);
    }
    zoneOf[i] = z;
  }
  const Z = zoneIndex.size;
  const sel = new Selector(R, Z, Z === 1 ? PLAIN : Z >= R ? SPREAD : MIXED);
  // One candidate per zone needs R zones above the seed: aim higher there, or slots miss and run twice.
  const expected = sel.mode === SPREAD ? 6 * R : 4 * R;
  let seed = uniform
    ? expected >= N
      ? -Infinity
      : Math.floor(4294967296 * (1 - expected / N)) - 2147483648
    : weightedSeed(weight, expected);
  const order = new Int32Array(R);
  const open = seedGates(weight, -Infinity);
  let gate = uniform ? open : seedGates(weight, seed);
  // With a seed, the hashing of every site runs in WebAssembly SIMD where available (scan.wat): the scanner's
  // gates let through exactly the sites the JavaScript pass would look at (score above the seed: for equal weights
  // `> seed`; weighted `≥ gate`, i.e. `> gate − 1`, which needs every gate above −2^31).
  let scanner: SiteScanner | undefined;
  if (seed !== -Infinity && N >= 16) {
    if (uniform) scanner = SiteScanner.create(siteMix, new Int32Array(N).fill(seed));
    else if (gate.every((g) => g > -2147483648))
      scanner = SiteScanner.create(
        siteMix,
        gate.map((g) => g - 1),
      );
  }
  let misses = 0;
  for (let s = 0; s < keyCount; s++) {
    const h = hashes[s]!;
    if (scanner !== undefined) {
      const count = scanner.scan(h);
      if (uniform) selectUniformFrom(sel, scanner.idx, scanner.val, count, zoneOf, seed);
      else selectWeightedFrom(sel, scanner.idx, scanner.val, count, weight, zoneOf, seed);
    } else if (uniform) selectUniform(sel, h, siteMix, zoneOf, seed);
    else selectWeighted(sel, h, siteMix, weight, zoneOf, seed, gate);
    if (!sel.complete()) {
      if (uniform) selectUniform(sel, h, siteMix, zoneOf, -Infinity);
      else selectWeighted(sel, h, siteMix, weight, zoneOf, -Infinity, open);
      if (seed !== -Infinity && ++misses * 8 > s + 64) {
        seed = -Infinity;
        gate = open;
        scanner = undefined;
      }
    }
    const row = s * R;
    const { candSite, candZone, champSite, champScore, len } = sel;
    if (sel.mode !== MIXED) {
      for (let k = 0; k < R; k++) rank[row + k] = candSite[k]!;
      continue;
    }
    // Every zone's best in score order (ties by id), then the best of the rest.
    let n = 0;
    for (let z = 0; z < Z; z++) {
      const site = champSite[z]!;
      const sc = champScore[z]!;
      let j = n++;
      for (; j > 0; j--) {
        const prev = order[j - 1]!;
        const prevScore = champScore[zoneOf[prev]!]!;
        if (sc > prevScore || (sc === prevScore && site < prev)) order[j] = prev;
        else break;
      }
      order[j] = site;
    }
    for (let k = 0; k < n; k++) rank[row + k] = order[k]!;
    for (let k = 0; k < len && n < R; k++) {
      const site = candSite[k]!;
      if (champSite[candZone[k]!] !== site) rank[row + n++] = site;
    }
  }
}

/** Place `slotCount` slots on `sites` with `replicas` replicas each. Deterministic; see the module comment. */
export function computeSlotPlacement(input: SlotPlacementInput): SlotPlacement {
  const { slotCount, replicas: requested, previous } = input;
  checkSlotCount(slotCount);
  checkReplicas(requested);
  const sites = normaliseSites(input.sites);
  if (previous !== undefined && previous.slotCount !== slotCount) {
    throw new InvalidArgumentError(
      `slot placement: previous placement has ${previous.slotCount} slots, not ${slotCount}; the slot count of a group cannot change`,
    );
  }
  const N = sites.length;
  const R = Math.min(requested, N);
  const base = {
    slotCount,
    replicas: R,
    requestedReplicas: requested,
    siteIds: Object.freeze(sites.map((s) => s.id)),
    siteZones: Object.freeze(sites.map((s) => s.zone)),
    siteWeights: Object.freeze(sites.map((s) => s.weight)),
  };
  if (R === 0) return Object.freeze({ ...base, table: new Uint16Array(0) });

  const rank = new Uint16Array(slotCount * R);
  rankReplicas(sites, slotHashTable(slotCount), slotCount, R, rank);

  // Start each slot from its previous primary while it is still a replica, else from its top-ranked replica.
  const primary = new Int32Array(slotCount);
  let prevToNew: Int32Array | undefined;
  if (previous !== undefined && previous.replicas > 0) {
    const index = new Map(sites.map((s, i) => [s.id, i]));
    prevToNew = Int32Array.from(previous.siteIds, (id) => index.get(id) ?? -1);
  }
  for (let s = 0; s < slotCount; s++) {
    const row = s * R;
    let p = rank[row]!;
    if (prevToNew !== undefined) {
      const was = prevToNew[previous!.table[s * previous!.replicas]!]!;
      if (was >= 0) {
        for (let r = 1; r < R; r++) {
          if (rank[row + r] === was) {
            p = was;
            break;
          }
        }
      }
    }
    primary[s] = p;
  }
  const { lo, hi } = leaderBounds(base.siteWeights, slotCount);
  balanceLeaders(N, slotCount, uniformRows(slotCount, R), rank, primary, lo, hi);

  // Rows: the primary first, then the other replicas in rank order.
  const table = new Uint16Array(slotCount * R);
  for (let s = 0; s < slotCount; s++) {
    const row = s * R;
    const p = primary[s]!;
    table[row] = p;
    let k = 1;
    for (let r = 0; r < R; r++) {
      const site = rank[row + r]!;
      if (site !== p) table[row + k++] = site;
    }
  }
  return Object.freeze({ ...base, table });
}

/** The replicas of `slot`, primary first. Allocates; for hot paths use a RoutingTable. */
export function slotReplicas(placement: SlotPlacement, slot: number): string[] {
  checkSlot(placement, slot);
  const R = placement.replicas;
  const out: string[] = [];
  for (let r = 0; r < R; r++) out.push(placement.siteIds[placement.table[slot * R + r]!]!);
  return out;
}

/** The primary of `slot`, or undefined when there are no sites. */
export function slotPrimary(placement: SlotPlacement, slot: number): string | undefined {
  checkSlot(placement, slot);
  if (placement.replicas === 0) return undefined;
  return placement.siteIds[placement.table[slot * placement.replicas]!];
}

function checkSlot(placement: SlotPlacement, slot: number): void {
  if (!Number.isInteger(slot) || slot < 0 || slot >= placement.slotCount) {
    throw new InvalidArgumentError(`slot ${String(slot)} is out of range 0..${placement.slotCount - 1}`);
  }
}

export interface SiteLoad {
  readonly id: string;
  /** Slots the site holds (as primary or secondary). */
  readonly replicas: number;
  /** Slots the site is primary for. */
  readonly primaries: number;
  /** Weighted share of slotCount × replicas (what `replicas` would be under perfect balance). */
  readonly replicaShare: number;
  /** Weighted share of slotCount (what `primaries` would be under perfect balance). */
  readonly primaryShare: number;
}

/** Per site, in id order: how many slots it holds and is primary for, and its weighted shares. */
export function siteLoads(placement: SlotPlacement): SiteLoad[] {
  const { siteIds, siteWeights, table, replicas: R, slotCount } = placement;
  const reps = new Int32Array(siteIds.length);
  const prims = new Int32Array(siteIds.length);
  for (let i = 0; i < table.length; i++) {
    reps[table[i]!]!++;
    if (i % R === 0) prims[table[i]!]!++;
  }
  const total = siteWeights.reduce((a, w) => a + w, 0);
  return siteIds.map((id, i) => ({
    id,
    replicas: reps[i]!,
    primaries: prims[i]!,
    replicaShare: (slotCount * R * siteWeights[i]!) / total,
    primaryShare: (slotCount * siteWeights[i]!) / total,
  }));
}

/** What changes for one slot between two placements. */
export interface SlotChange {
  readonly slot: number;
  /** Sites that must prepare the slot: replicas in `desired`, not in `current`. They start as not ready. */
  readonly gain: readonly string[];
  /**
   * Sites that are to drop the slot: replicas in `current`, not in `desired`. The protocol lets one drop only
   * while at least `requiredReady` other sites hold the slot ready.
   */
  readonly lose: readonly string[];
  /** Sites that hold the slot in both. */
  readonly keep: readonly string[];
  /** Primary in `current` and in `desired` (undefined where there is none); equal when the primary stays. */
  readonly primaryFrom: string | undefined;
  readonly primaryTo: string | undefined;
}

export interface TransitionPlan {
  readonly slotCount: number;
  /** Ready replicas the handoff rule asks for: `desired.replicas` (R, clamped to the number of sites). */
  readonly requiredReady: number;
  /** Slots where anything changes, in slot order. */
  readonly changes: readonly SlotChange[];
  /** Per site (ids of both placements): slots it must prepare and slots it is to drop, each in slot order. */
  readonly bySite: ReadonlyMap<string, { readonly gain: readonly number[]; readonly lose: readonly number[] }>;
  /** Totals: (slot, site) pairs gained and lost, slots whose primary changes. */
  readonly gained: number;
  readonly lost: number;
  readonly primaryChanges: number;
}

/**
 * Per slot, what must happen to go from `current` to `desired`: who prepares (gain), who may drop (lose), and the
 * primary change. Pure bookkeeping — the protocol decides when each step is safe.
 */
export function planTransition(current: SlotPlacement, desired: SlotPlacement): TransitionPlan {
  if (current.slotCount !== desired.slotCount) {
    throw new InvalidArgumentError(
      `planTransition: slot counts differ (${current.slotCount} and ${desired.slotCount}); the slot count of a group cannot change`,
    );
  }
  const slotCount = desired.slotCount;
  const Rc = current.replicas;
  const Rd = desired.replicas;
  // Map both placements' site indices onto one id list so a slot's sets compare as small integer arrays.
  const ids = [...new Set([...current.siteIds, ...desired.siteIds])].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  const index = new Map(ids.map((id, i) => [id, i]));
  const fromC = Int32Array.from(current.siteIds, (id) => index.get(id)!);
  const fromD = Int32Array.from(desired.siteIds, (id) => index.get(id)!);
  const mark = new Int32Array(ids.length); // 1: in current, 2: in desired, 3: both (per slot, reset after)
  const bySite = new Map<string, { gain: number[]; lose: number[] }>();
  const entry = (id: string): { gain: number[]; lose: number[] } => {
    let e = bySite.get(id);
    if (e === undefined) {
      e = { gain: [], lose: [] };
      bySite.set(id, e);
    }
    return e;
  };
  for (const id of ids) entry(id);
  const changes: SlotChange[] = [];
  let gained = 0;
  let lost = 0;
  let primaryChanges = 0;
  for (let s = 0; s < slotCount; s++) {
    for (let r = 0; r < Rc; r++) mark[fromC[current.table[s * Rc + r]!]!]! |= 1;
    for (let r = 0; r < Rd; r++) mark[fromD[desired.table[s * Rd + r]!]!]! |= 2;
    const pf = Rc > 0 ? current.siteIds[current.table[s * Rc]!] : undefined;
    const pt = Rd > 0 ? desired.siteIds[desired.table[s * Rd]!] : undefined;
    let changed = pf !== pt;
    for (let r = 0; r < Rc && !changed; r++) if (mark[fromC[current.table[s * Rc + r]!]!] !== 3) changed = true;
    for (let r = 0; r < Rd && !changed; r++) if (mark[fromD[desired.table[s * Rd + r]!]!] !== 3) changed = true;
    if (changed) {
      const gain: string[] = [];
      const lose: string[] = [];
      const keep: string[] = [];
      for (let r = 0; r < Rd; r++) {
        const g = fromD[desired.table[s * Rd + r]!]!;
        if (mark[g] === 2) gain.push(ids[g]!);
        else keep.push(ids[g]!);
      }
      for (let r = 0; r < Rc; r++) {
        const g = fromC[current.table[s * Rc + r]!]!;
        if (mark[g] === 1) lose.push(ids[g]!);
      }
      for (const id of gain) entry(id).gain.push(s);
      for (const id of lose) entry(id).lose.push(s);
      gained += gain.length;
      lost += lose.length;
      if (pf !== pt) primaryChanges++;
      changes.push({ slot: s, gain, lose, keep, primaryFrom: pf, primaryTo: pt });
    }
    for (let r = 0; r < Rc; r++) mark[fromC[current.table[s * Rc + r]!]!] = 0;
    for (let r = 0; r < Rd; r++) mark[fromD[desired.table[s * Rd + r]!]!] = 0;
  }
  return { slotCount, requiredReady: Rd, changes, bySite, gained, lost, primaryChanges };
}
