/**
 * The loop driver every runtime uses: a task that runs one at a time, where a
 * kick during a run asks for exactly one more run (so a burst of watch hints
 * costs at most two rounds, and no round ever overlaps another).
 */
export class Loop {
  #running = false;
  #again = false;
  #idle: Promise<void> = Promise.resolve();
  readonly #task: () => Promise<void>;
  readonly #onError: (error: unknown) => void;

  /** `onError` hears what a round threw; the loop itself survives every error. */
  constructor(task: () => Promise<void>, onError: (error: unknown) => void) {
    this.#task = task;
    this.#onError = onError;
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
    this.#running = true;
    this.#idle = (async () => {
      try {
        do {
          this.#again = false;
          try {
            await this.#task();
          } catch (error) {
            this.#onError(error);
          }
        } while (this.#again);
      } finally {
        this.#running = false;
      }
    })();
  }
}
