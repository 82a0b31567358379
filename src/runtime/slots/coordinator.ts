/**
 * The coordinator part of a slots member, run in the member's round while it
 * leads: ask the pure core (protocol/slots/coordinator.ts) for the next plan
 * and write the changed chunks under the leadership's guard. Like the groups
 * coordinator it only steers: a stale plan delays, the primary locks and the
 * guarded release keep slots safe.
 */
import type { Mutants } from '../../protocol/mutants.js';
import { decideSlotsPlan, type SlotsCoordinatorMemory } from '../../protocol/slots/coordinator.js';
import { writePlan } from '../../protocol/slots/io.js';
import type { SlotKeys, SlotsConfig } from '../../protocol/slots/keys.js';
import type { SlotsView } from '../../protocol/slots/view.js';
import type { Store } from '../../store/contract.js';
import type { Leadership } from '../../store/election.js';

export type PlanOutcome =
  /** `halted`: plan chunks that could not be read, so no plan was written (see SlotsView.unreadable). */
  | { readonly written: false; readonly deposed: boolean; readonly halted?: readonly string[] }
  | { readonly written: true; readonly generation: number; readonly changedSlots: number };

export class SlotsCoordinator {
  readonly #store: Store;
  readonly #keys: SlotKeys;
  readonly #config: SlotsConfig;
  readonly #mutants: Mutants;
  /** Lost on failover: that only changes which primaries stay put. */
  #memory: SlotsCoordinatorMemory = {};

  constructor(store: Store, keys: SlotKeys, config: SlotsConfig, mutants: Mutants) {
    this.#store = store;
    this.#keys = keys;
    this.#config = config;
    this.#mutants = mutants;
  }

  /** Write the next plan if it differs from the one in `view`. `deposed`: the guard failed (no longer leading). */
  async round(view: SlotsView, leadership: Leadership): Promise<PlanOutcome> {
    // Never overwrite what could not be read: no plan while a chunk is unreadable.
    if (view.unreadable !== undefined && view.unreadable.length > 0)
      return { written: false, deposed: false, halted: view.unreadable };
    const d = decideSlotsPlan(
      this.#config,
      { sites: view.sites, plan: view.plan, ready: view.ready, primaries: view.holderSites },
      this.#memory,
      this.#mutants,
    );
    if (d === undefined) return { written: false, deposed: false };
    this.#memory = { target: d.target };
    if (d.changed.length === 0) return { written: false, deposed: false };
    const generation = view.generation + 1;
    const ok = await writePlan(
      this.#store,
      this.#keys,
      leadership.guard,
      generation,
      d.plan,
      d.changed,
      this.#config.slotCount,
    );
    return ok ? { written: true, generation, changedSlots: d.changed.length } : { written: false, deposed: true };
  }
}
