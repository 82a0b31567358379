/**
 * The sessions one store opened, and the checks every backend makes on a
 * session handed back to it. A key may only be attached through the store
 * (and so the connection, lease or ZooKeeper session) that opened its
 * session, and only while that session is usable; written once here so that
 * all six backends refuse the same things with the same errors.
 */
import { InvalidArgumentError, SessionExpiredError } from '../errors.js';
import type { ServerClockSample } from './clock-rate.js';
import type { Clock, Session, SessionEnd, Txn } from './contract.js';
import { ManagedSession, type SessionDriver } from './session.js';

/** What every session of a store shares. */
export interface SessionSettings {
  readonly clock: Clock;
  readonly maxClockDriftRate: number;
  /** Upper bound of one keep-alive request. */
  readonly requestTimeoutMs: number;
  /** Every server clock reading a keep-alive brought back (the store checks the clock rate with them). */
  readonly onServerTime?: ((sample: ServerClockSample, ttlMs: number) => void) | undefined;
}

/** A session the server has just granted, as the backend describes it. */
export interface GrantedSession<D> {
  /** The id the server knows it by (unique within the store, never reused). */
  readonly id: string;
  /** The TTL the server granted (it may round the one asked for). */
  readonly ttlMs: number;
  readonly driver: SessionDriver;
  /** What the backend keeps with the session (its lease, its connection…). */
  readonly data: D;
  /** Called synchronously once the session exists, before anyone else sees it (to subscribe it to events). */
  readonly onOpen?: ((session: ManagedSession) => void) | undefined;
  /** Called once when it ends, after it left the registry. */
  readonly onEnd?: ((session: ManagedSession, end: SessionEnd) => void) | undefined;
}

interface Entry<D> {
  readonly session: ManagedSession;
  readonly data: D;
}

export class SessionRegistry<D = undefined> {
  readonly #settings: SessionSettings;
  readonly #entries = new Map<string, Entry<D>>();

  constructor(settings: SessionSettings) {
    this.#settings = settings;
  }

  /**
   * Start the keep-alive loop of a granted session and register it; it
   * leaves the registry when it ends. `createdSendAtMs` is the clock time at
   * which the request that created it was sent.
   */
  open(granted: GrantedSession<D>, createdSendAtMs: number): ManagedSession {
    const { clock, maxClockDriftRate, requestTimeoutMs, onServerTime } = this.#settings;
    const session: ManagedSession = new ManagedSession({
      id: granted.id,
      ttlMs: granted.ttlMs,
      clock,
      maxClockDriftRate,
      createdSendAtMs,
      requestTimeoutMs,
      driver: granted.driver,
      onServerTime: onServerTime === undefined ? undefined : (sample) => onServerTime(sample, granted.ttlMs),
      onEnd: (end) => {
        if (this.#entries.get(granted.id)?.session === session) this.#entries.delete(granted.id);
        granted.onEnd?.(session, end);
      },
    });
    this.#entries.set(granted.id, { session, data: granted.data });
    granted.onOpen?.(session);
    return session;
  }

  get size(): number {
    return this.#entries.size;
  }

  /** The live session with this id, if this store opened it. */
  get(id: string): ManagedSession | undefined {
    return this.#entries.get(id)?.session;
  }

  /** The ids of the sessions this store holds. */
  ids(): string[] {
    return [...this.#entries.keys()];
  }

  /** A snapshot of the sessions this store holds. */
  sessions(): ManagedSession[] {
    return [...this.#entries.values()].map((e) => e.session);
  }

  /** What the backend keeps with one of its sessions (see `own`). */
  dataOf(session: ManagedSession): D {
    const entry = this.#entries.get(session.id);
    if (entry === undefined || entry.session !== session) throw new SessionExpiredError(session.id);
    return entry.data;
  }

  /**
   * `session`, if this store opened it and it has not ended. An ended one is
   * SessionExpiredError (open a new one); any other is InvalidArgumentError
   * (a session of another store, or not a session at all).
   */
  own(session: Session): ManagedSession {
    const entry = this.#entries.get(session?.id);
    if (entry === undefined || entry.session !== session) {
      if (session instanceof ManagedSession && !session.usable) throw new SessionExpiredError(session.id);
      throw new InvalidArgumentError(`session ${String(session?.id)} was not opened by this store`);
    }
    return entry.session;
  }

  /**
   * The session a transaction attaches keys to (validateTxn allows at most
   * one), checked with `own` and to be usable; undefined when no put names one.
   */
  ofTxn(txn: Txn): ManagedSession | undefined {
    for (const op of [...txn.then, ...(txn.else ?? [])]) {
      if (op.op !== 'put' || op.session === undefined) continue;
      const session = this.own(op.session);
      session.assertUsable();
      return session;
    }
    return undefined;
  }

  /** Close every session (each revokes on the server, bounded by the request timeout). */
  async closeAll(): Promise<void> {
    await Promise.all(this.sessions().map((s) => s.close()));
  }

  /** The server lost them all (e.g. its data): end every session as expired. */
  expireAll(cause: unknown): void {
    for (const s of this.sessions()) s.markExpired(cause);
  }

  /** The process "died" (simulator): stop every keep-alive without telling anyone; the server expires them. */
  abandonAll(): void {
    for (const s of this.sessions()) s.abandon();
    this.#entries.clear();
  }
}
