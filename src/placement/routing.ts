/**
 * The routing table: which nodes serve each slot, read on every request. It is
 * the one routing model of the library: a slots member serves its live table
 * (built from the primary locks and ready bitmaps it watches) through
 * `routing()`, `route()` and `routeKey()`, and a client that only knows a
 * placement can build the same kind of table with `fromPlacement`.
 *
 * Immutable: a change makes a new table that shares every unchanged route, so
 * a caller may keep a table as long as it likes and compare versions. Lookups
 * touch no store and allocate nothing (the Go library this replaces called
 * Redis on every lookup); `slotForKey` hashes the key's UTF-8 bytes on the fly.
 */
import { InvalidArgumentError } from '../errors.js';
import { keyHash16 } from './slot-hash.js';
import type { SlotPlacement } from './slots.js';

/** A node as routes name it. */
export interface NodeRoute {
  readonly id: string;
  /** Where to reach the node (host:port, URL…), as it registered it; undefined when unknown. */
  readonly address: string | undefined;
}

/** A slot's primary: the node whose writes count, with the fencing epoch it must attach to them. */
export interface PrimaryRoute extends NodeRoute {
  /** The primary lock's revision (grows with every new primary); 0 in a table built from a placement. */
  readonly epoch: number;
}

/** Who serves one slot now. */
export interface SlotRoute {
  readonly slot: number;
  /** undefined while the slot has no primary (during a fail-over, or before the first one is ready). */
  readonly primary: PrimaryRoute | undefined;
  /** Ready replicas other than the primary. */
  readonly secondaries: readonly NodeRoute[];
}

export type NodeAddresses = ReadonlyMap<string, string> | Readonly<Record<string, string>>;

export class RoutingTable {
  /** Grows with every change the table reflects (a store revision for a live table); keep the newest you see. */
  readonly version: number;
  readonly slotCount: number;
  readonly #routes: readonly SlotRoute[];

  /** A table of these routes (one per slot, in slot order; the table keeps the array: do not change it). */
  constructor(routes: readonly SlotRoute[], version: number) {
    if (!Number.isSafeInteger(version) || version < 0) {
      throw new InvalidArgumentError(`routing table version is ${String(version)}; use a non-negative integer`);
    }
    routes.forEach((r, i) => {
      if (r.slot !== i) throw new InvalidArgumentError(`routing table: the route at index ${i} is for slot ${r.slot}`);
    });
    this.version = version;
    this.slotCount = routes.length;
    this.#routes = routes;
    Object.freeze(this);
  }

  /** Every slot without a primary or secondaries. */
  static empty(slotCount: number, version = 0): RoutingTable {
    return new RoutingTable(
      Array.from({ length: slotCount }, (_, slot) =>
        Object.freeze({ slot, primary: undefined, secondaries: NO_NODES }),
      ),
      version,
    );
  }

  /**
   * The table a placement describes: the placement's first replica as primary (epoch 0: no lock stands behind
   * it), the others as secondaries. For clients that compute placement themselves; a slots member serves the
   * live table instead.
   */
  static fromPlacement(placement: SlotPlacement, addresses: NodeAddresses, version: number): RoutingTable {
    const { slotCount, replicas: R, siteIds, table } = placement;
    if (table.length !== slotCount * R) {
      throw new InvalidArgumentError(
        `routing table: placement has ${table.length} entries for ${slotCount} slots × ${R} replicas`,
      );
    }
    const lookup =
      addresses instanceof Map
        ? (id: string): string | undefined => (addresses as ReadonlyMap<string, string>).get(id)
        : (id: string): string | undefined =>
            Object.hasOwn(addresses, id) ? (addresses as Readonly<Record<string, string>>)[id] : undefined;
    const nodes = siteIds.map((id): NodeRoute => Object.freeze({ id, address: lookup(id) }));
    const primaries = nodes.map((n): PrimaryRoute => Object.freeze({ ...n, epoch: 0 }));
    const routes: SlotRoute[] = new Array<SlotRoute>(slotCount);
    for (let s = 0; s < slotCount; s++) {
      const secondaries: NodeRoute[] = [];
      for (let r = 1; r < R; r++) {
        const n = nodes[table[s * R + r]!];
        if (n === undefined) throw new InvalidArgumentError(`routing table: slot ${s} names an unknown node`);
        secondaries.push(n);
      }
      routes[s] = Object.freeze({
        slot: s,
        primary: R === 0 ? undefined : primaries[table[s * R]!],
        secondaries: Object.freeze(secondaries),
      });
    }
    return new RoutingTable(routes, version);
  }

  /** A new table with the routes of `changes` replaced, sharing every other route with this one. */
  with(changes: ReadonlyMap<number, SlotRoute>, version: number): RoutingTable {
    const routes = [...this.#routes];
    for (const [slot, route] of changes) {
      this.#check(slot);
      routes[slot] = route;
    }
    return new RoutingTable(routes, version);
  }

  /** The slot of `key`: CRC16 (Redis Cluster's, with hash tags) mod slotCount. See slotForKey. */
  slotForKey(key: string): number {
    return keyHash16(key) % this.slotCount;
  }

  /** Who serves `slot`. No allocation. */
  route(slot: number): SlotRoute {
    const r = this.#routes[slot];
    if (r === undefined) throw this.#outOfRange(slot);
    return r;
  }

  /** `route(slotForKey(key))`. */
  routeKey(key: string): SlotRoute {
    return this.#routes[keyHash16(key) % this.slotCount]!;
  }

  /** The primary of `slot` (undefined while it has none). */
  primary(slot: number): PrimaryRoute | undefined {
    return this.route(slot).primary;
  }

  #check(slot: number): void {
    if (!(Number.isInteger(slot) && slot >= 0 && slot < this.slotCount)) throw this.#outOfRange(slot);
  }

  #outOfRange(slot: number): InvalidArgumentError {
    return new InvalidArgumentError(`slot ${String(slot)} is out of range 0..${this.slotCount - 1}`);
  }
}

const NO_NODES: readonly NodeRoute[] = Object.freeze([]);

/** Two routes say the same (same primary with the same epoch and address, same secondaries in order). */
export function sameRoute(a: SlotRoute, b: SlotRoute): boolean {
  return (
    a.primary?.id === b.primary?.id &&
    a.primary?.epoch === b.primary?.epoch &&
    a.primary?.address === b.primary?.address &&
    a.secondaries.length === b.secondaries.length &&
    a.secondaries.every((x, i) => x.id === b.secondaries[i]!.id && x.address === b.secondaries[i]!.address)
  );
}
