/**
 * The live routing table a slots member serves: for each slot, the holder of
 * its primary lock (with the lock's epoch) once that holder is ready, and the
 * other assigned nodes that are ready. Rebuilt from each snapshot the member
 * reads, for the slots that may have changed, into a new immutable
 * RoutingTable (the same class a client builds from a placement).
 */
import { RoutingTable, sameRoute, type NodeRoute, type SlotRoute } from '../../placement/routing.js';
import { hasReady } from '../../protocol/slots/keys.js';
import type { SlotsView } from '../../protocol/slots/view.js';

export class LiveRouting {
  #table: RoutingTable;
  #routedRevision = -1;

  constructor(slotCount: number) {
    this.#table = RoutingTable.empty(slotCount);
  }

  get table(): RoutingTable {
    return this.#table;
  }

  /**
   * Bring the table in step with `view` for `slots` (undefined: every slot). True when any route changed (the table
   * then has the view's revision as its version).
   */
  publish(view: SlotsView, slots: Iterable<number> | undefined): boolean {
    // The same snapshot as last time (a timer's round with no write anywhere since): nothing to rebuild.
    if (view.revision === this.#routedRevision) return false;
    this.#routedRevision = view.revision;
    const changes = new Map<number, SlotRoute>();
    const visit = (s: number): void => {
      const h = view.holders[s];
      const holderReady = h !== undefined && hasReady(view.ready.get(h.site), s);
      const primary =
        h === undefined || !holderReady
          ? undefined
          : Object.freeze({ id: h.site, address: view.sites.get(h.site)?.address, epoch: h.epoch });
      const secondaries: NodeRoute[] = [];
      for (const x of view.plan[s]?.assigned ?? []) {
        if (x !== h?.site && hasReady(view.ready.get(x), s)) {
          secondaries.push(Object.freeze({ id: x, address: view.sites.get(x)?.address }));
        }
      }
      const route: SlotRoute = { slot: s, primary, secondaries };
      if (!sameRoute(this.#table.route(s), route)) {
        changes.set(s, Object.freeze({ slot: s, primary, secondaries: Object.freeze(secondaries) }));
      }
    };
    if (slots === undefined) for (let s = 0; s < this.#table.slotCount; s++) visit(s);
    else for (const s of slots) visit(s);
    if (changes.size === 0) return false;
    this.#table = this.#table.with(changes, view.revision);
    return true;
  }
}
