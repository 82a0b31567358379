/**
 * Leader election on the store contract, with a fencing token.
 *
 * Each candidate creates `<prefix><sessionId>` attached to its session; the
 * key with the lowest create revision leads, and its create revision is the
 * fencing token. A leader guards each write with `leadership.guard` (its own
 * key still has that create revision), so a leader whose session has expired
 * cannot write even if it still believes it leads: the store refuses.
 *
 * Safety does not depend on watches: they only make a waiting candidate
 * re-check sooner. Waiting candidates also re-check on a timer, so a lost
 * notification delays, but never breaks, the election.
 */
import { InvalidArgumentError, SessionExpiredError } from '../errors.js';
import type { Compare, KeyValue, Session, Store, Watcher } from './contract.js';
import { validateKey } from './validate.js';

export interface ElectionOptions {
  /** Prefix under which candidates register, e.g. `groups/orders/coordinator/`. */
  readonly prefix: string;
  /** Re-check interval while waiting, in case a watch hint was lost. Default: the session TTL / 2. */
  readonly recheckIntervalMs?: number | undefined;
}

export interface Leadership {
  /** The fencing token: the create revision of the leader's key. Grows with every new leader. */
  readonly token: number;
  readonly key: string;
  readonly session: Session;
  /** Add to every guarded transaction's compares. */
  readonly guard: Compare;
  /** Resolves when leadership is known lost (key gone, session ended) or resigned. */
  readonly lost: Promise<void>;
  /** Give up leadership (deletes the key). */
  resign(): Promise<void>;
}

export interface LeaderInfo {
  readonly key: string;
  readonly value: string;
  readonly token: number;
  readonly sessionId: string | undefined;
}

export class Election {
  readonly #store: Store;
  readonly #prefix: string;
  readonly #recheckMs: number | undefined;

  constructor(store: Store, options: ElectionOptions) {
    validateKey(options.prefix, 'election prefix');
    if (options.recheckIntervalMs !== undefined && !(options.recheckIntervalMs > 0)) {
      throw new InvalidArgumentError('recheckIntervalMs must be positive');
    }
    this.#store = store;
    this.#prefix = options.prefix;
    this.#recheckMs = options.recheckIntervalMs;
  }

  /** The current leader, if any. */
  async leader(): Promise<LeaderInfo | undefined> {
    const { kvs } = await this.#store.range(this.#prefix);
    const first = lowest(kvs);
    return first === undefined
      ? undefined
      : { key: first.key, value: first.value, token: first.createRevision, sessionId: first.sessionId };
  }

  /**
   * Register as a candidate and wait until this session leads. Rejects with
   * SessionExpiredError if the session ends first, or with the signal's reason.
   */
  async campaign(session: Session, value: string, signal?: AbortSignal): Promise<Leadership> {
    const store = this.#store;
    const key = `${this.#prefix}${session.id}`;
    const put = await store.txn({
      compare: [{ key, target: 'exists', exists: false }],
      then: [{ op: 'put', key, value, session }],
      else: [{ op: 'get', key }],
    });
    let token = put.succeeded ? put.revision : undefined;
    if (!put.succeeded) {
      const r = put.results[0];
      token = r?.op === 'get' ? r.kv?.createRevision : undefined;
    }
    if (token === undefined) throw new SessionExpiredError(session.id, 'election key vanished while campaigning');

    let wake: (() => void) | undefined;
    const watcher: Watcher = await store.watch(this.#prefix, () => wake?.());
    try {
      for (;;) {
        signal?.throwIfAborted();
        if (session.state === 'expired' || session.state === 'closed') throw new SessionExpiredError(session.id);
        const { kvs } = await store.range(this.#prefix);
        const mine = kvs.find((kv) => kv.key === key);
        if (mine === undefined || mine.createRevision !== token) {
          throw new SessionExpiredError(session.id, 'election key was deleted (session expired) while campaigning');
        }
        if (lowest(kvs)?.key === key) return this.#lead(session, key, token);
        await new Promise<void>((resolve) => {
          const clock = store.clock;
          const t = clock.setTimeout(done, this.#recheckMs ?? session.ttlMs / 2);
          const onAbort = (): void => done();
          signal?.addEventListener('abort', onAbort, { once: true });
          void session.ended.then(done);
          wake = done;
          function done(): void {
            clock.clearTimeout(t);
            signal?.removeEventListener('abort', onAbort);
            resolve();
          }
        });
        wake = undefined;
      }
    } catch (err) {
      await this.#withdraw(key, token).catch(() => undefined);
      throw err;
    } finally {
      await watcher.close();
    }
  }

  async #withdraw(key: string, token: number): Promise<void> {
    await this.#store.txn({
      compare: [{ key, target: 'createRevision', op: '=', value: token }],
      then: [{ op: 'delete', key }],
    });
  }

  async #lead(session: Session, key: string, token: number): Promise<Leadership> {
    const store = this.#store;
    const guard: Compare = { key, target: 'createRevision', op: '=', value: token };
    let markLost!: () => void;
    const lost = new Promise<void>((resolve) => {
      markLost = resolve;
    });
    let over = false;
    let watcher: Watcher | undefined = undefined;
    const end = (): void => {
      if (over) return;
      over = true;
      void watcher?.close();
      markLost();
    };
    void session.ended.then(end);
    // Watch our own key: when it vanishes (expiry seen by the server), leadership is lost.
    watcher = await store.watch(key, () => {
      void store.get(key).then(
        (kv) => {
          if (kv === undefined || kv.createRevision !== token) end();
        },
        () => undefined,
      );
    });
    if (over) void watcher.close();
    return {
      token,
      key,
      session,
      guard,
      lost,
      resign: async () => {
        if (over) return;
        end();
        await this.#withdraw(key, token);
      },
    };
  }
}

function lowest(kvs: readonly KeyValue[]): KeyValue | undefined {
  let best: KeyValue | undefined;
  for (const kv of kvs) if (best === undefined || kv.createRevision < best.createRevision) best = kv;
  return best;
}
