/**
 * The routing table: which sites serve a key, built once per placement and then read on every request. Pure and
 * immutable; lookups touch no store (the Go library this replaces called Redis on every lookup).
 *
 * `route(slot)` and `primary(slot)` return objects built with the table, so a lookup allocates nothing;
 * `slotForKey` hashes the key's UTF-8 bytes on the fly without encoding them into a buffer. `primaryIndex` and
 * `replicaIndex` read the placement's typed array directly for callers that keep their own per-site state in
 * arrays.
 */
import { InvalidArgumentError } from '../errors.js';
import { keyHash16 } from './slot-hash.js';
import type { SlotPlacement } from './slots.js';

/** One site as the routing table knows it. */
export interface SiteRoute {
  readonly id: string;
  /** Index into `RoutingTable.sites` (and the placement's `siteIds`). */
  readonly index: number;
  readonly zone: string;
  /** Where to reach the site (host:port, URL…), as the site registered it; undefined when unknown. */
  readonly address: string | undefined;
}

/** The replicas of one slot. */
export interface SlotRoute {
  readonly slot: number;
  /** undefined only when there are no sites at all. */
  readonly primary: SiteRoute | undefined;
  /** Primary first, then the secondaries in rendezvous rank order. */
  readonly replicas: readonly SiteRoute[];
  readonly secondaries: readonly SiteRoute[];
}

export type SiteAddresses = ReadonlyMap<string, string> | Readonly<Record<string, string>>;

export class RoutingTable {
  /** Grows with each placement the group publishes; a client keeps the newest table it has seen. */
  readonly version: number;
  readonly slotCount: number;
  /** Replicas per slot (R, clamped to the number of sites). */
  readonly replicas: number;
  /** Every site of the placement, in id order. */
  readonly sites: readonly SiteRoute[];
  readonly #table: Uint16Array;
  readonly #routes: readonly SlotRoute[];
  readonly #byId: ReadonlyMap<string, SiteRoute>;

  /**
   * @param placement a placement (the table keeps a reference to its typed array: do not modify it)
   * @param addresses site id → address; sites without one get `address: undefined`
   * @param version a non-negative integer, e.g. the generation the placement was published with
   */
  constructor(placement: SlotPlacement, addresses: SiteAddresses, version: number) {
    if (!Number.isSafeInteger(version) || version < 0) {
      throw new InvalidArgumentError(`routing table version is ${String(version)}; use a non-negative integer`);
    }
    const { slotCount, replicas: R, siteIds, siteZones, table } = placement;
    if (table.length !== slotCount * R || siteZones.length !== siteIds.length) {
      throw new InvalidArgumentError(
        `routing table: placement has ${table.length} entries for ${slotCount} slots × ${R} replicas`,
      );
    }
    const lookup =
      addresses instanceof Map
        ? (id: string): string | undefined => (addresses as ReadonlyMap<string, string>).get(id)
        : (id: string): string | undefined =>
            Object.hasOwn(addresses, id) ? (addresses as Readonly<Record<string, string>>)[id] : undefined;
    const sites = siteIds.map((id, index): SiteRoute =>
      Object.freeze({ id, index, zone: siteZones[index]!, address: lookup(id) }),
    );
    const routes: SlotRoute[] = new Array<SlotRoute>(slotCount);
    for (let s = 0; s < slotCount; s++) {
      const replicas: SiteRoute[] = [];
      for (let r = 0; r < R; r++) {
        const site = sites[table[s * R + r]!];
        if (site === undefined) throw new InvalidArgumentError(`routing table: slot ${s} names an unknown site`);
        replicas.push(site);
      }
      Object.freeze(replicas);
      routes[s] = Object.freeze({
        slot: s,
        primary: replicas[0],
        replicas,
        secondaries: Object.freeze(replicas.slice(1)),
      });
    }
    this.version = version;
    this.slotCount = slotCount;
    this.replicas = R;
    this.sites = Object.freeze(sites);
    this.#table = table;
    this.#routes = routes;
    this.#byId = new Map(sites.map((s) => [s.id, s]));
    Object.freeze(this);
  }

  /** The slot of `key`: CRC16 (Redis Cluster's, with hash tags) mod slotCount. See slotForKey. */
  slotForKey(key: string): number {
    return keyHash16(key) % this.slotCount;
  }

  /** The sites serving `slot`, primary first. No allocation. */
  route(slot: number): SlotRoute {
    const r = this.#routes[slot];
    if (r === undefined) throw this.#outOfRange(slot);
    return r;
  }

  /** `route(slotForKey(key))`. */
  routeKey(key: string): SlotRoute {
    return this.#routes[keyHash16(key) % this.slotCount]!;
  }

  /** The primary of `slot`; undefined only when there are no sites. */
  primary(slot: number): SiteRoute | undefined {
    return this.route(slot).primary;
  }

  /** Index (into `sites`) of the primary of `slot`, or −1 when there are no sites. */
  primaryIndex(slot: number): number {
    this.#check(slot);
    return this.replicas === 0 ? -1 : this.#table[slot * this.replicas]!;
  }

  /** Index (into `sites`) of the replica of `slot` at `rank` (0 = primary). */
  replicaIndex(slot: number, rank: number): number {
    this.#check(slot);
    if (!Number.isInteger(rank) || rank < 0 || rank >= this.replicas) {
      throw new InvalidArgumentError(`replica rank ${String(rank)} is out of range 0..${this.replicas - 1}`);
    }
    return this.#table[slot * this.replicas + rank]!;
  }

  /** The site with this id, if it is in the table. */
  site(id: string): SiteRoute | undefined {
    return this.#byId.get(id);
  }

  #check(slot: number): void {
    if (!(Number.isInteger(slot) && slot >= 0 && slot < this.slotCount)) throw this.#outOfRange(slot);
  }

  #outOfRange(slot: number): InvalidArgumentError {
    return new InvalidArgumentError(`slot ${String(slot)} is out of range 0..${this.slotCount - 1}`);
  }
}
