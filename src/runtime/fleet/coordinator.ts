/**
 * The fleet's coordinator loop, run by the node that won the fleet's coordinator election for as long as it leads
 * (the election itself is the membership module's: see member.ts). One round: read the fleet view, ask the pure
 * decision (protocol/fleet/coordinator.ts) which desired placements changed, write those under the leadership's
 * guard (`writeDesired`). Rounds run on the shared Loop when a watch hint (nodes, groups, desired records) or the
 * membership's tick arrives, one at a time.
 *
 * Outcomes of a write: `deposed` (the guard failed: another node leads) → stop coordinating and tell the owner;
 * `stale` (a group or desired record changed since the read) → read again in the next round, at once; an error
 * (the store did not answer) → retried on the next hint or tick. The coordinator is only ever an optimiser: every
 * write is guarded, so a stale one is refused by the store.
 *
 * The Raft side is not here. Each node runs the Raft groups whose desired record names it, and each group's leader
 * moves its membership toward `desired/<name>` one change at a time with `nextStep` (src/protocol/fleet/plan.ts),
 * reporting progress with `reportObserved`; it reads the desired records, it never asks the coordinator.
 */
import { CorruptDataError } from '../../errors.js';
import {
  decideFleetRound,
  newFleetCoordinatorMemory,
  type FleetCoordinatorMemory,
  type FleetCoordinatorSettings,
  type FleetRoundDecision,
} from '../../protocol/fleet/coordinator.js';
import { FleetRecordCache, readFleetView, writeDesired } from '../../protocol/fleet/io.js';
import type { FleetKeys } from '../../protocol/fleet/keys.js';
import { NO_MUTANTS, type Mutants } from '../../protocol/mutants.js';
import type { Clock, Store, TimerHandle } from '../../store/contract.js';
import type { Leadership } from '../../store/election.js';
import { CorruptionReports } from '../corruption.js';
import { Loop } from '../loop.js';
import { Watches } from '../watches.js';

/** The longest pause between two rounds the pace imposes. */
const MAX_ROUND_SPACING_MS = 1000;
/** A tick-driven round waits this many times the last round's cost (tick())… */
const TICK_COST_FACTOR = 20;
/**
 * …and at least this long. Rounds for changes come from watch hints and timed wakes; the tick only makes up for a
 * lost hint. At 1 000 groups a round costs ~50 ms, so one a second kept the coordinator's node at 5 % of a core in
 * an idle fleet (the others at 2 %).
 */
const TICK_MIN_SPACING_MS = 5000;

export interface FleetCoordinatorEvents {
  /** A round wrote `written` desired placements; `pending` more wait for the next rounds (the per-round bound). */
  placed(written: number, pending: number): void;
  error(error: unknown, context: string): void;
}

/** What one round did (for the owner's status and for tests). */
export type FleetRoundOutcome =
  | { readonly outcome: 'idle' }
  | { readonly outcome: 'written'; readonly decision: FleetRoundDecision; readonly written: number }
  | { readonly outcome: 'stale' | 'deposed'; readonly decision: FleetRoundDecision; readonly written: number };

export class FleetCoordinator {
  readonly #store: Store;
  readonly #keys: FleetKeys;
  readonly #clock: Clock;
  readonly #leadership: Leadership;
  readonly #settings: FleetCoordinatorSettings;
  readonly #ownsNow: () => boolean;
  readonly #onDeposed: () => void;
  readonly #events: FleetCoordinatorEvents;
  readonly #mutants: Mutants;
  readonly #loop: Loop;
  readonly #watches: Watches;
  readonly #corruption: CorruptionReports;
  /** Decoded control-plane records, reused while unchanged (io.ts FleetRecordCache). */
  readonly #records = new FleetRecordCache();
  #memory: FleetCoordinatorMemory = newFleetCoordinatorMemory();
  #wake: TimerHandle | undefined;
  #stopped = false;
  #lastCostMs = 0;
  #lastRoundAtMs = Number.NEGATIVE_INFINITY;
  /** The groups skipped for an unreadable desired record, as reported last (each set reported once). */
  #skipped = '';
  #last: FleetRoundOutcome = { outcome: 'idle' };

  constructor(args: {
    store: Store;
    keys: FleetKeys;
    clock: Clock;
    leadership: Leadership;
    settings: FleetCoordinatorSettings;
    /** The membership's lease check: a coordinator that cannot trust its lease does not decide. */
    ownsNow: () => boolean;
    /** The guard failed: this node no longer leads (the owner ends the leadership; the campaign goes on). */
    onDeposed: () => void;
    events: FleetCoordinatorEvents;
    mutants?: Mutants | undefined;
  }) {
    this.#store = args.store;
    this.#keys = args.keys;
    this.#clock = args.clock;
    this.#leadership = args.leadership;
    this.#settings = args.settings;
    this.#ownsNow = args.ownsNow;
    this.#onDeposed = args.onDeposed;
    this.#events = args.events;
    this.#mutants = args.mutants ?? NO_MUTANTS;
    this.#corruption = new CorruptionReports((error) => this.#events.error(error, 'fleet coordinator: reading'));
    // Paced like the groups coordinator: a round over 10 000 groups costs milliseconds, and while nodes come and go
    // the hints never stop; spacing rounds by twice their cost leaves the process time for everything else.
    this.#loop = new Loop(
      () => this.#round(),
      (error) => this.#events.error(error, 'fleet coordinator round'),
      { clock: this.#clock, spacingMs: () => Math.min(MAX_ROUND_SPACING_MS, 2 * this.#lastCostMs) },
    );
    this.#watches = new Watches(
      this.#store,
      () => this.kick(),
      (error) => this.#events.error(error, 'fleet coordinator: watching'),
    );
  }

  get token(): number {
    return this.#leadership.token;
  }

  /** What the last round did. */
  get lastRound(): FleetRoundOutcome {
    return this.#last;
  }

  async start(): Promise<void> {
    // Not observed/: leaders report there all the time and nothing the coordinator decides depends on it.
    await this.#watches.set([this.#keys.nodes, this.#keys.groups, this.#keys.desired]);
    this.kick();
  }

  /** Run a round soon (a watch hint, a write to finish, a time to recheck). */
  kick(): void {
    if (!this.#stopped) this.#loop.kick();
  }

  /**
   * The membership's tick (every reconcileIntervalMs): a round only when the last one started at least
   * TICK_COST_FACTOR times its cost ago. Changes come as watch hints and timed rechecks as wakes; the tick is the
   * safety net, and at 10 000 groups a round costs a second — a round per tick kept a core 30 % busy in an idle fleet.
   */
  tick(): void {
    const spacingMs = Math.max(TICK_MIN_SPACING_MS, TICK_COST_FACTOR * this.#lastCostMs);
    if (this.#clock.now() - this.#lastRoundAtMs >= spacingMs) this.kick();
  }

  /** Resolves once no round runs. */
  idle(): Promise<void> {
    return this.#loop.idle();
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    if (this.#wake !== undefined) this.#clock.clearTimeout(this.#wake);
    this.#wake = undefined;
    this.#loop.cancel();
    await this.#watches.close();
  }

  async #round(): Promise<void> {
    if (this.#stopped || !this.#ownsNow()) return;
    const startedAtMs = this.#clock.now();
    this.#lastRoundAtMs = startedAtMs;
    let view;
    try {
      view = await readFleetView(this.#store, this.#keys, this.#corruption.report, this.#records);
    } catch (error) {
      this.#events.error(error, 'fleet coordinator: reading the fleet');
      return;
    }
    this.#corruption.endRound();
    if (this.#stopped || !this.#ownsNow()) return;
    const nowMs = this.#clock.now();
    const decision = decideFleetRound(view, (name) => this.#keys.desiredOf(name), this.#settings, this.#memory, nowMs);
    this.#memory = decision.memory;
    this.#lastCostMs = this.#clock.now() - startedAtMs;
    this.#reportSkipped(decision);
    if (decision.wakeAtMs !== undefined) this.#wakeAt(decision.wakeAtMs);
    if (decision.writes.length === 0) {
      this.#last = { outcome: 'written', decision, written: 0 };
      return;
    }
    const r = await writeDesired(this.#store, this.#keys, this.#leadership.guard, view, decision.writes, this.#mutants);
    this.#last = { outcome: r.outcome, decision, written: r.written };
    if (r.written > 0) this.#events.placed(r.written, decision.pending);
    if (r.outcome === 'deposed') {
      this.#stopped = true;
      this.#onDeposed();
      return;
    }
    // Stale: read again at once. Written with more pending: the next batch in the next round (paced by the loop).
    if (r.outcome === 'stale' || decision.pending > 0) this.kick();
  }

  /** Groups skipped for an unreadable desired record: said once per set of groups, as one error naming them. */
  #reportSkipped(decision: FleetRoundDecision): void {
    const id = decision.skipped.map((s) => s.name).join('\u0000');
    if (id !== this.#skipped && decision.skipped.length > 0) {
      const s = decision.skipped;
      const shown =
        s
          .slice(0, 5)
          .map((x) => x.key)
          .join(', ') + (s.length > 5 ? ` and ${s.length - 5} more` : '');
      this.#events.error(
        new CorruptDataError(
          `fleet ${this.#keys.fleet}: the coordinator skips ${s.length} group(s) whose desired record could not be ` +
            `read (${shown}); it never overwrites what it could not read, and the other groups go on. Look at the ` +
            'key, then delete it: the next round places the group again',
          { key: s[0]!.key, expected: 'a fleet desired record (docs/fleet.md, "Control-plane records")' },
        ),
        'fleet coordinator: groups skipped',
      );
    }
    this.#skipped = id;
  }

  #wakeAt(atMs: number): void {
    if (this.#wake !== undefined) this.#clock.clearTimeout(this.#wake);
    this.#wake = this.#clock.setTimeout(
      () => {
        this.#wake = undefined;
        this.kick();
      },
      Math.max(0, atMs - this.#clock.now()),
      { background: true },
    );
  }
}
