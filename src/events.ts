/**
 * The typed event emitter every runtime uses.
 *
 *  - A listener that throws never breaks the protocol: its error is reported
 *    as an `error` event (a ListenerError naming the event, the thrown value
 *    as its cause) and the other listeners still run.
 *  - Errors are never swallowed: an `error` event with no listener, or an
 *    `error` listener that throws, becomes a process warning
 *    (`process.emitWarning`, printed on stderr), once per context.
 *  - Events can be held: a runtime holds its events while `join…()` runs and
 *    opens them once the caller has the object (on the next timer turn), so
 *    that nothing emitted while joining (`joined`, the first assignments) is
 *    emitted to nobody.
 */
import { describe, ListenerError } from './errors.js';

/** The payload of `error` events, the same for every runtime. */
export interface ErrorEvent {
  readonly error: unknown;
  /** What was being done, e.g. `reading the cluster` or `listener of prepare`. */
  readonly context: string;
}

type Listener = (e: never) => void;

export class TypedEmitter<Events extends { error: ErrorEvent }> {
  readonly #listeners = new Map<keyof Events, Set<Listener>>();
  /** Events emitted while held, in order; undefined once open. */
  #held: [keyof Events, unknown][] | undefined;
  readonly #warned = new Set<string>();

  /** `held`: queue every event until openEvents() (see the file comment). */
  constructor(options: { held?: boolean } = {}) {
    this.#held = options.held === true ? [] : undefined;
  }

  /** Subscribe; returns an unsubscribe function. */
  on<K extends keyof Events>(event: K, listener: (e: Events[K]) => void): () => void {
    let set = this.#listeners.get(event);
    if (set === undefined) {
      set = new Set();
      this.#listeners.set(event, set);
    }
    set.add(listener as Listener);
    return () => set.delete(listener as Listener);
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

  /** Deliver the held events, in order, and every later one at once. */
  protected openEvents(): void {
    const held = this.#held;
    this.#held = undefined;
    for (const [event, payload] of held ?? []) this.#deliver(event, payload as Events[keyof Events]);
  }

  protected emit<K extends keyof Events>(event: K, payload: Events[K]): void {
    if (this.#held !== undefined) this.#held.push([event, payload]);
    else this.#deliver(event, payload);
  }

  /** Report a background error (shorthand for emit('error', …)). */
  protected reportError(error: unknown, context: string): void {
    this.emit('error', { error, context } as Events['error']);
  }

  #deliver<K extends keyof Events>(event: K, payload: Events[K]): void {
    const set = this.#listeners.get(event);
    if (event === 'error' && (set === undefined || set.size === 0)) {
      this.#warn(payload as ErrorEvent);
      return;
    }
    for (const l of [...(set ?? [])]) {
      try {
        (l as (e: Events[K]) => void)(payload);
      } catch (thrown) {
        if (event === 'error') this.#warn({ error: new ListenerError('error', thrown), context: 'listener of error' });
        else
          this.#deliver('error', {
            error: new ListenerError(String(event), thrown),
            context: `listener of ${String(event)}`,
          } as Events['error']);
      }
    }
  }

  /** Nobody listens for errors (or the error listener threw): say it on stderr, once per context. */
  #warn(e: ErrorEvent): void {
    const key = e.context;
    if (this.#warned.has(key)) return;
    this.#warned.add(key);
    process.emitWarning(`${e.context}: ${describe(e.error)} (listen for the "error" event to handle these)`, {
      type: 'RebalancerWarning',
      code: typeof e.error === 'object' && e.error !== null && 'code' in e.error ? String(e.error.code) : undefined,
    });
  }
}
