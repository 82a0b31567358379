/**
 * Delivery of watch hints for backends that learn of changes centrally (a
 * notification channel, a poll) and fan them out to their watchers: hints
 * reach a consumer one at a time, never after its watcher closed, a throwing
 * consumer cannot break the store, and hints waiting to be delivered are
 * coalesced (consumers re-read on every hint anyway, so only the newest
 * revision of each reason matters).
 */
import type { WatchHint, Watcher } from './contract.js';

export class HintQueue {
  readonly prefix: string;
  readonly #onHint: (hint: WatchHint) => void;
  #open = true;
  #queue: WatchHint[] = [];
  #scheduled = false;

  constructor(prefix: string, onHint: (hint: WatchHint) => void) {
    this.prefix = prefix;
    this.#onHint = onHint;
  }

  get open(): boolean {
    return this.#open;
  }

  notify(hint: WatchHint): void {
    if (!this.#open) return;
    const last = this.#queue[this.#queue.length - 1];
    if (last !== undefined && last.reason === hint.reason) {
      this.#queue[this.#queue.length - 1] = { reason: hint.reason, revision: Math.max(last.revision, hint.revision) };
    } else {
      this.#queue.push(hint);
    }
    if (this.#scheduled) return;
    this.#scheduled = true;
    // A microtask: the consumer runs after the code that noticed the change, never inside it.
    queueMicrotask(() => this.#drain());
  }

  close(): void {
    this.#open = false;
    this.#queue = [];
  }

  #drain(): void {
    this.#scheduled = false;
    const hints = this.#queue;
    this.#queue = [];
    for (const hint of hints) {
      if (!this.#open) return;
      try {
        this.#onHint(hint);
      } catch {
        // A throwing consumer must not break the store.
      }
    }
  }
}

/** The watchers of one store. */
export class WatcherSet implements Iterable<HintQueue> {
  readonly #entries = new Set<HintQueue>();

  /** A new watcher of `prefix`; closing it stops its hints at once. */
  add(prefix: string, onHint: (hint: WatchHint) => void): Watcher {
    const entry = new HintQueue(prefix, onHint);
    this.#entries.add(entry);
    return {
      close: () => {
        entry.close();
        this.#entries.delete(entry);
        return Promise.resolve();
      },
    };
  }

  get size(): number {
    return this.#entries.size;
  }

  [Symbol.iterator](): Iterator<HintQueue> {
    return this.#entries[Symbol.iterator]();
  }

  /** Hint every watcher (a change whose keys are unknown, or a resync). */
  notifyAll(hint: WatchHint): void {
    for (const w of this.#entries) w.notify(hint);
  }

  closeAll(): void {
    for (const w of this.#entries) w.close();
    this.#entries.clear();
  }
}
