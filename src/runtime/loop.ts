/**
 * The loop driver every runtime uses: a task that runs one at a time, where a
 * kick during a run asks for exactly one more run (so a burst of watch hints
 * costs at most two rounds, and no round ever overlaps another).
 *
 * Paced (optional): after a round, the next one waits `pace.spacingMs()` (the
 * task says how long, typically a multiple of what its last round cost). In a
 * small group that is nothing; in a large one, where watch hints never stop
 * while work moves, rounds no longer run back to back and the process keeps
 * time for everything else on its event loop (keep-alives, handlers).
 */
import type { Clock, TimerHandle } from '../store/contract.js';

export interface LoopPace {
  readonly clock: Clock;
  /** How long to wait, after the round that just ended, before the next one. */
  spacingMs(): number;
}

export class Loop {
  #running = false;
  #again = false;
  #idle: Promise<void> = Promise.resolve();
  readonly #task: () => Promise<void>;
  readonly #onError: (error: unknown) => void;
  readonly #pace: LoopPace | undefined;
  #nextAtMs = Number.NEGATIVE_INFINITY;
  #timer: TimerHandle | undefined;

  /** `onError` hears what a round threw; the loop itself survives every error. */
  constructor(task: () => Promise<void>, onError: (error: unknown) => void, pace?: LoopPace) {
    this.#task = task;
    this.#onError = onError;
    this.#pace = pace;
  }

  get running(): boolean {
    return this.#running;
  }

  /** Resolves once no round runs (and none is asked for). */
  idle(): Promise<void> {
    return this.#idle;
  }

  kick(): void {
    if (this.#running) {
      this.#again = true;
      return;
    }
    const pace = this.#pace;
    if (pace !== undefined) {
      if (this.#timer !== undefined) return;
      const waitMs = this.#nextAtMs - pace.clock.now();
      // Whole milliseconds: a clock that scales time (the simulator's drifting clocks) may wake a hair early, and
      // a timer that looked again would then wait for nothing, forever.
      if (waitMs >= 1) {
        this.#timer = pace.clock.setTimeout(
          () => {
            this.#timer = undefined;
            this.#run();
          },
          waitMs,
          { background: true },
        );
        return;
      }
    }
    this.#run();
  }

  #run(): void {
    if (this.#running) {
      this.#again = true;
      return;
    }
    const pace = this.#pace;
    this.#running = true;
    this.#idle = (async () => {
      let deferred = false;
      try {
        do {
          this.#again = false;
          try {
            await this.#task();
          } catch (error) {
            this.#onError(error);
          }
          if (pace !== undefined) {
            this.#nextAtMs = pace.clock.now() + pace.spacingMs();
            // The next round waits for its turn: kick() schedules it once this one is over.
            if (this.#again && this.#nextAtMs - pace.clock.now() >= 1) deferred = true;
          }
        } while (this.#again && !deferred);
      } finally {
        this.#running = false;
      }
      if (deferred) this.kick();
    })();
  }

  /** Forget a pending paced round (the owner stops). */
  cancel(): void {
    if (this.#timer !== undefined && this.#pace !== undefined) this.#pace.clock.clearTimeout(this.#timer);
    this.#timer = undefined;
  }
}
