/**
 * The store watches a runtime keeps open, all turned into one thing: a kick
 * of its loop. Watch hints are level-triggered ("something under this prefix
 * may have changed: re-read"), so coalescing is the loop's job (a kick during
 * a round asks for exactly one more); this class only opens and closes
 * watches so that the set open is the set wanted, even while opening one is
 * still under way.
 */
import type { Store, Watcher } from '../store/contract.js';

export class Watches {
  readonly #store: Store;
  readonly #kick: () => void;
  readonly #onError: (error: unknown) => void;
  /** prefix → its watch (`watcher` unset while it is being opened). */
  readonly #open = new Map<string, { watcher?: Watcher }>();
  #closed = false;

  constructor(store: Store, kick: () => void, onError: (error: unknown) => void) {
    this.#store = store;
    this.#kick = kick;
    this.#onError = onError;
  }

  /** Watch exactly `prefixes` from now on. Resolves once every new watch is open (or failed). */
  async set(prefixes: Iterable<string>): Promise<void> {
    const wanted = new Set(this.#closed ? [] : prefixes);
    for (const [prefix, entry] of this.#open) {
      if (wanted.has(prefix)) continue;
      this.#open.delete(prefix);
      void entry.watcher?.close().catch(() => undefined);
    }
    const opening: Promise<void>[] = [];
    for (const prefix of wanted) {
      if (this.#open.has(prefix)) continue;
      const entry: { watcher?: Watcher } = {};
      this.#open.set(prefix, entry);
      opening.push(
        this.#store
          .watch(prefix, () => this.#kick())
          .then(
            (w) => {
              // Not wanted any more (or closed) while it was being opened: drop it.
              if (this.#open.get(prefix) !== entry) void w.close().catch(() => undefined);
              else entry.watcher = w;
              this.#kick(); // a change may have happened while the watch was being opened
            },
            (error: unknown) => {
              if (this.#open.get(prefix) === entry) this.#open.delete(prefix);
              this.#onError(error);
            },
          ),
      );
    }
    await Promise.all(opening);
  }

  /** Add `prefixes` to what is watched. */
  add(...prefixes: string[]): Promise<void> {
    return this.set([...this.#open.keys(), ...prefixes]);
  }

  /** Close every watch; later set() calls open nothing. */
  async close(): Promise<void> {
    this.#closed = true;
    const entries = [...this.#open.values()];
    this.#open.clear();
    await Promise.all(entries.map((e) => e.watcher?.close().catch(() => undefined)));
  }
}
