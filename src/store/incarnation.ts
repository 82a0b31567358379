/**
 * The incarnation of a namespace's data, and the delayed restart that makes a
 * store that loses its data safe (ADR 0009).
 *
 * Safety rests on a lock vanishing only when its holder's session expires on
 * the server, after the holder's own deadline. A store that loses its data (a
 * Redis restart without persistence, a wiped etcd data directory) drops every
 * lock at once — up to a TTL before their holders stop. So:
 *
 *  1. Each namespace holds an incarnation record (a reserved key) with a random
 *     id, written once when its data is (re)created. Every client remembers
 *     the id it works in and re-reads it every third of its shortest session
 *     TTL: a record that is gone or has another id means the data was lost,
 *     and every session of the client ends at once (StoreDataLostError).
 *  2. A new incarnation is *young* until every lease from before it could have
 *     ended: no session is granted in a young incarnation (StoreRecoveringError
 *     with the time left), so no lock, and no work, can be granted while an old
 *     holder — a process paused through the loss — may still act on its lease.
 *     A client waits `youngForMs` on its own clock from when it first saw the
 *     record (which is after the loss), stretched by the drift bound, then marks
 *     the record mature; later clients see it mature and do not wait.
 *  3. How long a new record stays young: `maxSessionTtlMs` (every client of a
 *     namespace must use the same; the record carries it and a client with
 *     another value is refused) — unless the backend can prove that no data
 *     could have been lost within that time: Redis's uptime covers its
 *     restarts, so a namespace created on a server up for longer than
 *     `maxSessionTtlMs` starts mature. A client that saw the old incarnation
 *     go always creates the new one young.
 */
import { CorruptDataError, InvalidArgumentError, StoreDataLostError, StoreRecoveringError } from '../errors.js';
import type { Clock, KeyValue, Txn, TxnResult } from './contract.js';

/** Reserved: the only key of a namespace the library writes for itself (hidden from range reads). */
export const RESERVED_PREFIX = '.rebalancer/';
export const INCARNATION_KEY = `${RESERVED_PREFIX}incarnation`;

export interface IncarnationRecord {
  readonly id: string;
  readonly maxSessionTtlMs: number;
  readonly state: 'young' | 'mature';
  /** How long a client waits, from when it first sees this record, before it may treat it as mature. */
  readonly youngForMs: number;
  /** The server (process) the record was last confirmed on, where the backend can tell one from another. */
  readonly serverId?: string | undefined;
}

/**
 * What a backend can say about its server: who it is (a new id after every restart or failover), how long a
 * namespace must stay young because of it (what is left of the longest TTL since it started), and whether it
 * persists its data (then a missing record is a new namespace, not a lost one).
 */
export interface ServerIdentity {
  readonly id: string;
  readonly youngForMs: number;
  readonly persists: boolean;
}

export function encodeIncarnation(r: IncarnationRecord): string {
  return JSON.stringify({ v: 1, ...r });
}

export function decodeIncarnation(value: string): IncarnationRecord {
  let rec: unknown;
  try {
    rec = JSON.parse(value);
  } catch (cause) {
    throw new CorruptDataError(`${INCARNATION_KEY} is not JSON; it was not written by Rebalancer`, {
      key: INCARNATION_KEY,
      cause,
    });
  }
  const r = rec as Partial<IncarnationRecord> & { v?: unknown };
  if (
    r === null ||
    typeof r !== 'object' ||
    r.v !== 1 ||
    typeof r.id !== 'string' ||
    typeof r.maxSessionTtlMs !== 'number' ||
    (r.state !== 'young' && r.state !== 'mature') ||
    typeof r.youngForMs !== 'number' ||
    !(r.youngForMs >= 0)
  ) {
    throw new CorruptDataError(`${INCARNATION_KEY} holds a record Rebalancer did not write: ${value.slice(0, 200)}`, {
      key: INCARNATION_KEY,
    });
  }
  const serverId = (rec as { serverId?: unknown }).serverId;
  if (serverId !== undefined && typeof serverId !== 'string') {
    throw new CorruptDataError(`${INCARNATION_KEY}: serverId must be a string`, { key: INCARNATION_KEY });
  }
  return { id: r.id, maxSessionTtlMs: r.maxSessionTtlMs, state: r.state, youngForMs: r.youngForMs, serverId };
}

export interface IncarnationDeps {
  readonly backend: string;
  readonly namespace: string;
  readonly clock: Clock;
  readonly maxSessionTtlMs: number;
  readonly maxClockDriftRate: number;
  readonly read: () => Promise<KeyValue | undefined>;
  readonly txn: (txn: Txn) => Promise<TxnResult>;
  /**
   * The server's identity (see ServerIdentity), for backends whose server can restart without its data; undefined
   * for those that lose data only when an operator destroys it (a missing record is then a new namespace).
   */
  readonly server: () => Promise<ServerIdentity | undefined>;
  readonly newId: () => string;
  /** False only for the simulator's mutant `no-delayed-restart`: every incarnation is trusted at once. */
  readonly delayedRestart: () => boolean;
}

export class Incarnation {
  readonly #d: IncarnationDeps;
  /** The incarnation this client works in. */
  #known: { id: string; mature: boolean; seenAtMs: number; youngForMs: number } | undefined;
  /** This client saw an incarnation that is gone: the next one it creates is young for the full TTL. */
  #sawLoss = false;

  constructor(deps: IncarnationDeps) {
    this.#d = deps;
  }

  /** The full delayed restart: the longest TTL, stretched by the drift bound (our clock may run fast). */
  get fullWaitMs(): number {
    return Math.ceil(this.#d.maxSessionTtlMs * (1 + this.#d.maxClockDriftRate)) + 1;
  }

  /**
   * Before a session is granted: find (or create) the incarnation; return when it is mature, or throw
   * StoreRecoveringError with the time left. Always reads the record (a session is opened rarely; an incarnation
   * check that is a third of a TTL old must not let a session into data that was lost since). A loss found here
   * is thrown (StoreDataLostError) after `onLoss` heard it (the caller ends its sessions with it).
   */
  async admit(onLoss: (error: StoreDataLostError) => void): Promise<void> {
    const kv = await this.#d.read();
    let rec: IncarnationRecord | undefined;
    try {
      rec = kv === undefined ? undefined : decodeIncarnation(kv.value);
    } catch (error) {
      // Garbage in the record: never overwrite what could not be read (an operator must look); and if this client
      // worked in an incarnation, that data is not there any more.
      if (this.#known !== undefined) onLoss(this.lost('its incarnation record holds data Rebalancer did not write'));
      throw error;
    }
    let modRevision = kv?.modRevision ?? 0;
    const known = this.#known;
    if (known !== undefined && (rec === undefined || rec.id !== known.id)) {
      // Said once, to the caller too (its sessions may already have ended for another reason — a keep-alive that
      // found them gone — and it must hear why); the next call waits out the delayed restart.
      const lost = this.lost(
        rec === undefined ? 'its incarnation record is gone' : 'its incarnation record was replaced',
      );
      onLoss(lost);
      throw lost;
    }
    if (rec !== undefined) this.#checkTtl(rec);
    if (rec === undefined) {
      const created = await this.#create();
      rec = created.rec;
      modRevision = created.modRevision;
    }
    let youngForMs = rec.youngForMs;
    let mature = rec.state === 'mature';
    let serverId = rec.serverId;
    if (this.#known === undefined && !this.#sawLoss) {
      // A record written on another server process than the one serving now: that one restarted (or a replica
      // took over) since, and may have dropped locks written after its last persistence: young for what is left
      // of the longest TTL since it started.
      const server = await this.#d.server();
      if (server !== undefined && rec.serverId !== server.id) {
        serverId = server.id;
        if (server.youngForMs > 0) {
          mature = false;
          youngForMs = Math.max(youngForMs, server.youngForMs);
        }
      }
    }
    const now = this.#d.clock.now();
    if (this.#known === undefined) {
      // A client that saw the data go waits the full delayed restart, whatever the record says: it knows leases
      // from before may still run; a client that did not trusts the record (and the server's age).
      this.#known = this.#sawLoss
        ? { id: rec.id, mature: false, seenAtMs: now, youngForMs: Math.max(youngForMs, this.fullWaitMs) }
        : { id: rec.id, mature, seenAtMs: now, youngForMs };
    }
    const k = this.#known;
    if (!this.#d.delayedRestart()) k.mature = true;
    if (k.mature && rec.serverId === serverId) return;
    const leftMs = k.seenAtMs + k.youngForMs - now;
    if (!k.mature && leftMs > 0) throw new StoreRecoveringError(this.#d.namespace, leftMs);
    // Every lease from before has ended by now: say so (on this server), so that later clients do not wait.
    if (rec.state === 'young' || rec.serverId !== serverId) {
      await this.#d.txn({
        compare: [{ key: INCARNATION_KEY, target: 'modRevision', op: '=', value: modRevision }],
        then: [{ op: 'put', key: INCARNATION_KEY, value: encodeIncarnation({ ...rec, state: 'mature', serverId }) }],
      });
    }
    k.mature = true;
    this.#sawLoss = false;
  }

  /**
   * After a session was granted: is the record still the one admit() let it in under? The data may have been lost
   * between that check and the grant, and then the session lives in the new data, where no holder from before has
   * been waited for. Throws StoreDataLostError (after `onLoss` heard it) if so: the caller drops the session.
   */
  async confirm(onLoss: (error: StoreDataLostError) => void): Promise<void> {
    const known = this.#known;
    if (known === undefined || !this.#d.delayedRestart()) return;
    const kv = await this.#d.read();
    let id: string | undefined;
    try {
      id = kv === undefined ? undefined : decodeIncarnation(kv.value).id;
    } catch {
      id = undefined;
    }
    if (id === known.id || this.#known !== known) return;
    const lost = this.lost(id === undefined ? 'its incarnation record is gone' : 'its incarnation record was replaced');
    onLoss(lost);
    throw lost;
  }

  /**
   * The periodic check: undefined while the incarnation this client works in is still there, a StoreDataLostError
   * once it is gone or replaced (the caller ends every session with it).
   */
  async check(): Promise<StoreDataLostError | undefined> {
    const known = this.#known;
    if (known === undefined) return undefined;
    const kv = await this.#d.read();
    if (this.#known !== known) return undefined; // changed meanwhile: the caller is already dealing with it
    let rec: IncarnationRecord | undefined;
    try {
      rec = kv === undefined ? undefined : decodeIncarnation(kv.value);
    } catch {
      rec = undefined; // garbage where our record was: the data we worked in is not there any more
    }
    if (rec !== undefined && rec.id === known.id) return undefined;
    this.#sawLoss = true;
    this.#known = undefined;
    return this.#lost(kv === undefined ? 'its incarnation record is gone' : 'its incarnation record was replaced');
  }

  /** The backend noticed the loss itself (a revision that went backwards, a replaced file). */
  lost(detail: string): StoreDataLostError {
    this.#sawLoss = true;
    this.#known = undefined;
    return this.#lost(detail);
  }

  #lost(detail: string): StoreDataLostError {
    return new StoreDataLostError(this.#d.backend, this.#d.namespace, detail);
  }

  async #create(): Promise<{ rec: IncarnationRecord; modRevision: number }> {
    // Where none was: a new namespace — unless the server may have dropped it (a restart of a server that does not
    // persist, within the longest TTL), or this client saw the one it worked in go.
    const server = await this.#d.server();
    const youngForMs = this.#sawLoss
      ? this.fullWaitMs
      : server === undefined || server.persists
        ? 0
        : server.youngForMs;
    const rec: IncarnationRecord = {
      id: this.#d.newId(),
      maxSessionTtlMs: this.#d.maxSessionTtlMs,
      state: youngForMs > 0 ? 'young' : 'mature',
      youngForMs,
      serverId: server?.id,
    };
    const r = await this.#d.txn({
      compare: [{ key: INCARNATION_KEY, target: 'exists', exists: false }],
      then: [{ op: 'put', key: INCARNATION_KEY, value: encodeIncarnation(rec) }],
      else: [{ op: 'get', key: INCARNATION_KEY }],
    });
    if (r.succeeded) return { rec, modRevision: r.revision };
    const kv = r.results[0]?.op === 'get' ? r.results[0].kv : undefined;
    if (kv === undefined) return this.#create(); // deleted between the compare and the get: try again
    const found = decodeIncarnation(kv.value);
    this.#checkTtl(found);
    return { rec: found, modRevision: kv.modRevision };
  }

  #checkTtl(rec: IncarnationRecord): void {
    if (rec.maxSessionTtlMs !== this.#d.maxSessionTtlMs) {
      throw new InvalidArgumentError(
        `namespace ${JSON.stringify(this.#d.namespace)} is used with maxSessionTtlMs ${rec.maxSessionTtlMs}; this ` +
          `client has ${this.#d.maxSessionTtlMs}. Every client of a namespace must use the same value (it bounds ` +
          'how long the namespace waits after the store lost its data)',
      );
    }
  }
}
