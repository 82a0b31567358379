/**
 * The coordinator loop of a resource group, run by the member that won the
 * election for as long as it leads: read the group (incrementally), ask the
 * pure core what to write (protocol/groups/coordinator.ts), write it under
 * the leadership's guard, wake up when the core says, and keep the resource
 * registry in step with a resource source if one is configured.
 *
 * A coordinator is only ever an optimiser: every write is guarded, so a stale
 * one is refused by the store, and safety rests on the per-resource locks.
 */
import { CorruptDataError } from '../../errors.js';
import type { PlacementStrategy } from '../../placement/index.js';
import {
  decideCoordinator,
  newCoordinatorMemory,
  type CoordinatorDecision,
  type CoordinatorMemory,
} from '../../protocol/groups/coordinator.js';
import { CoordinatorReader, writeCoordinatorDecision } from '../../protocol/groups/io.js';
import type { GroupKeys, Protocol } from '../../protocol/groups/keys.js';
import type { Mutants } from '../../protocol/mutants.js';
import type { Store, TimerHandle } from '../../store/contract.js';
import type { Leadership } from '../../store/election.js';
import { CorruptionReports } from '../corruption.js';
import { Loop } from '../loop.js';
import { Watches } from '../watches.js';
import type { ResolvedGroupOptions } from './options.js';
import { syncRegistry } from './registry.js';

/** The longest pause between two coordinator rounds that kick() imposes. */
const MAX_ROUND_SPACING_MS = 1000;

export interface CoordinatorEvents {
  rebalanceStarted(generation: number, moves: number, protocol: Protocol): void;
  rebalanceCompleted(generation: number, durationMs: number): void;
  error(error: unknown, context: string): void;
}

export class GroupCoordinator {
  readonly #o: ResolvedGroupOptions;
  readonly #store: Store;
  readonly #keys: GroupKeys;
  readonly #leadership: Leadership;
  readonly #mutants: Mutants;
  readonly #ownsNow: () => boolean;
  readonly #rejoinedAtMs: number | undefined;
  /** The guard failed: this node no longer leads. */
  readonly #onDeposed: () => void;
  readonly #events: CoordinatorEvents;
  readonly #reader: CoordinatorReader;
  readonly #loop: Loop;
  #memory: CoordinatorMemory = newCoordinatorMemory();
  readonly #watches: Watches;
  #wake: TimerHandle | undefined;
  #sourceTimer: TimerHandle | undefined;
  #rebalance: { generation: number; startedAtMs: number } | undefined;
  #stopped = false;
  readonly #corruption: CorruptionReports;
  /** The keys the coordinator stopped for (see CoordinatorDecision.halted), as reported last. */
  #halted = '';
  /** What the last round's read and decision cost (ms): the loop's pace. */
  #lastCostMs = 0;

  constructor(args: {
    options: ResolvedGroupOptions;
    keys: GroupKeys;
    leadership: Leadership;
    mutants: Mutants;
    ownsNow: () => boolean;
    /** When this node registered again after losing its session (undefined: its first join). */
    rejoinedAtMs: number | undefined;
    onDeposed: () => void;
    events: CoordinatorEvents;
  }) {
    this.#rejoinedAtMs = args.rejoinedAtMs;
    this.#o = args.options;
    this.#store = args.options.store;
    this.#keys = args.keys;
    this.#leadership = args.leadership;
    this.#mutants = args.mutants;
    this.#ownsNow = args.ownsNow;
    this.#onDeposed = args.onDeposed;
    this.#events = args.events;
    this.#corruption = new CorruptionReports((error) => this.#events.error(error, 'coordinator: reading group view'));
    this.#reader = new CoordinatorReader(
      this.#store,
      this.#keys,
      this.#corruption.report,
      // A full re-read now and then heals anything the caches could miss (keys changed by hand).
      Math.max(30_000, 10 * this.#o.reconcileIntervalMs),
    );
    // Rounds are spaced by twice what the last one's read and decision cost (at most MAX_ROUND_SPACING_MS): in a
    // group of 100 000 resources every handoff wakes the coordinator and a round reads many locks; this way it
    // spends at most a third of its time there and leaves the rest to its process (keep-alives, handlers).
    this.#loop = new Loop(
      () => this.#round(),
      (error) => this.#events.error(error, 'coordinator round'),
      { clock: this.#o.clock, spacingMs: () => Math.min(MAX_ROUND_SPACING_MS, 2 * this.#lastCostMs) },
    );
    this.#watches = new Watches(
      this.#store,
      () => this.kick(),
      (error) => this.#events.error(error, 'coordinator: watching'),
    );
  }

  get token(): number {
    return this.#leadership.token;
  }

  async start(): Promise<void> {
    await this.#watches.set([this.#keys.root]);
    if (this.#stopped) return;
    this.#scheduleResourceSource();
    this.kick();
  }

  kick(): void {
    if (!this.#stopped) this.#loop.kick();
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    const clock = this.#o.clock;
    if (this.#wake !== undefined) clock.clearTimeout(this.#wake);
    if (this.#sourceTimer !== undefined) clock.clearTimeout(this.#sourceTimer);
    this.#wake = this.#sourceTimer = undefined;
    this.#loop.cancel();
    await this.#watches.close();
  }

  async #round(): Promise<void> {
    // A coordinator that cannot trust its lease must not decide (its writes would fail anyway).
    if (this.#stopped || !this.#ownsNow()) return;
    const startedAtMs = this.#o.clock.now();
    let view;
    try {
      view = await this.#reader.read(this.#o.clock.now());
    } catch (error) {
      this.#events.error(error, 'coordinator: reading group view');
      return;
    }
    if (this.#stopped) return;
    this.#corruption.endRound();
    const now = this.#o.clock.now();
    let decision: CoordinatorDecision;
    try {
      decision = decideCoordinator(
        this.#mutants.has('overwrite-unreadable') ? { ...view, unreadable: undefined } : view,
        {
          protocol: this.#o.protocol,
          strategy: this.#o.strategy as PlacementStrategy,
          gracePeriodMs: this.#o.gracePeriodMs,
          drainTimeoutMs: this.#o.drainTimeoutMs,
          rebalanceDebounceMs: this.#o.rebalanceDebounceMs,
          rejoinGracePeriodMs: this.#o.rejoinGracePeriodMs,
          minRebalanceIntervalMs: this.#o.minRebalanceIntervalMs,
        },
        this.#memory,
        now,
        { nodeId: this.#o.node.id, token: this.#leadership.token, rejoinedAtMs: this.#rejoinedAtMs },
      );
    } catch (error) {
      this.#events.error(error, 'coordinator: placement');
      return;
    }
    this.#memory = decision.memory;
    this.#lastCostMs = now - startedAtMs + (this.#o.clock.now() - now);
    if (this.#reportHalt(decision.halted)) return;
    const generation = decision.state?.generation ?? view.state?.generation ?? view.maxGeneration;
    const startsRebalance =
      decision.state !== undefined && decision.state.generation > (view.state?.generation ?? view.maxGeneration);
    if (decision.changes.length > 0 || decision.state !== undefined) {
      try {
        const outcome = await writeCoordinatorDecision(
          this.#store,
          this.#keys,
          this.#leadership.guard,
          decision.changes,
          generation,
          decision.state,
          this.#mutants,
          view.stateRevision,
        );
        if (outcome === 'deposed') {
          // The guard failed: we are no longer the coordinator.
          this.#onDeposed();
          return;
        }
        if (outcome === 'stale') {
          // The state changed after our read (earlier batches may have been applied): read everything, decide again.
          this.#reader.invalidate();
          this.kick();
          return;
        }
        this.#reader.applied(decision.changes, generation);
      } catch (error) {
        // Some batches may have been applied: read the grants again.
        this.#reader.invalidate();
        this.#events.error(error, 'coordinator: writing grants');
        this.#wakeAt(now + Math.min(1000, this.#o.reconcileIntervalMs));
        return;
      }
      if (startsRebalance) {
        this.#rebalance = { generation, startedAtMs: now };
        this.#events.rebalanceStarted(generation, decision.moves, this.#o.protocol);
      }
    } else if (decision.settled && this.#rebalance !== undefined) {
      const r = this.#rebalance;
      this.#rebalance = undefined;
      this.#events.rebalanceCompleted(r.generation, now - r.startedAtMs);
    }
    if (decision.wakeAtMs !== undefined) this.#wakeAt(decision.wakeAtMs);
  }

  /**
   * Keys the coordinator would write could not be read: it writes nothing (never overwrites them) and says so once
   * per set of keys. Members keep what they hold; the next round after the repair (a watch hint, or the tick)
   * coordinates again. Returns true while halted.
   */
  #reportHalt(halted: readonly string[] | undefined): boolean {
    const id = (halted ?? []).join('\u0000');
    if (id !== this.#halted && halted !== undefined && halted.length > 0) {
      const g = this.#o.group;
      const shown = halted.slice(0, 5).join(', ') + (halted.length > 5 ? ` and ${halted.length - 5} more` : '');
      this.#events.error(
        new CorruptDataError(
          `the coordinator of group ${g} stopped coordinating: ${shown} could not be read, and it never overwrites ` +
            'what it could not read. Members keep running what they hold while their lease holds; nothing is ' +
            `moved or started until the key is repaired: \`rebalancer groups repair --group ${g}\` lists the ` +
            "unreadable keys and deletes them with --delete (the coordinator then rewrites the group's state)",
          { key: halted[0]!, expected: "Rebalancer's record (see docs/protocol/groups.md)" },
        ),
        'coordinator halted',
      );
    }
    this.#halted = id;
    return id !== '';
  }

  #wakeAt(atMs: number): void {
    const clock = this.#o.clock;
    if (this.#wake !== undefined) clock.clearTimeout(this.#wake);
    this.#wake = clock.setTimeout(
      () => {
        this.#wake = undefined;
        this.kick();
      },
      Math.max(0, atMs - clock.now()),
      { background: true },
    );
  }

  #scheduleResourceSource(): void {
    const source = this.#o.resourceSource;
    if (source === undefined) return;
    const run = async (): Promise<void> => {
      if (this.#stopped) return;
      try {
        await this.#syncResources();
      } catch (error) {
        this.#events.error(error, 'resource source');
      }
      if (!this.#stopped) {
        this.#sourceTimer = this.#o.clock.setTimeout(() => void run(), this.#o.resourceSourceIntervalMs, {
          background: true,
        });
      }
    };
    void run();
  }

  async #syncResources(): Promise<void> {
    const source = this.#o.resourceSource!;
    const clock = this.#o.clock;
    const abort = new AbortController();
    const timer = clock.setTimeout(
      () => abort.abort(new Error(`the resource source did not answer within ${this.#o.resourceSourceTimeoutMs} ms`)),
      this.#o.resourceSourceTimeoutMs,
    );
    let listed: Iterable<string>;
    try {
      listed = await Promise.race([
        Promise.resolve(source.list(abort.signal)),
        new Promise<never>((_, reject) =>
          abort.signal.addEventListener('abort', () => reject(abort.signal.reason as Error)),
        ),
      ]);
    } finally {
      clock.clearTimeout(timer);
    }
    await syncRegistry(this.#store, this.#keys, listed, this.#leadership.guard);
  }
}
