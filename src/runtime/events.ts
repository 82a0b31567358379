/** A small typed event emitter: listeners that throw never break the emitter's owner. */
export class TypedEmitter<Events extends object> {
  readonly #listeners = new Map<keyof Events, Set<(e: never) => void>>();

  /** Subscribe; returns an unsubscribe function. */
  on<K extends keyof Events>(event: K, listener: (e: Events[K]) => void): () => void {
    let set = this.#listeners.get(event);
    if (set === undefined) {
      set = new Set();
      this.#listeners.set(event, set);
    }
    set.add(listener as (e: never) => void);
    return () => set.delete(listener as (e: never) => void);
  }

  /** Subscribe for one event. */
  once<K extends keyof Events>(event: K, listener: (e: Events[K]) => void): () => void {
    const off = this.on(event, (e) => {
      off();
      listener(e);
    });
    return off;
  }

  /** Resolve with the next event of this kind (or one that passes `filter`). */
  next<K extends keyof Events>(event: K, filter?: (e: Events[K]) => boolean): Promise<Events[K]> {
    return new Promise((resolve) => {
      const off = this.on(event, (e) => {
        if (filter !== undefined && !filter(e)) return;
        off();
        resolve(e);
      });
    });
  }

  protected emit<K extends keyof Events>(event: K, payload: Events[K]): void {
    const set = this.#listeners.get(event);
    if (set === undefined) return;
    for (const l of [...set]) {
      try {
        (l as (e: Events[K]) => void)(payload);
      } catch {
        // A listener's bug must not break the protocol loop.
      }
    }
  }
}
