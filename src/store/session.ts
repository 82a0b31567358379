/**
 * The keep-alive loop and local expiry shared by every backend's sessions.
 *
 * A backend supplies a SessionDriver (one keep-alive request, one revoke
 * request); this class owns the schedule, the state machine and the
 * self-fencing deadline, so those rules are written (and tested) once.
 */
import { SessionExpiredError } from '../errors.js';
import type { ServerClockSample } from './clock-rate.js';
import type { Clock, Session, SessionEnd, SessionState, TimerHandle } from './contract.js';
import { withTimeout } from './timeout.js';

/** Keep-alive and deadline timers must not keep a process alive on their own. */
const BACKGROUND = { background: true } as const;

/** An acknowledged keep-alive that also tells the server's clock as it processed it (wall-clock milliseconds). */
export interface AliveAt {
  readonly alive: true;
  readonly serverTimeMs: number;
}

export interface SessionDriver {
  /**
   * Extend the session on the server. Resolve `alive` when the server
   * acknowledged it (so the server's expiry is at least send time + TTL),
   * `gone` when the server says the session no longer exists. Reject (or
   * time out) on transport errors. A backend whose server tells its time
   * resolves `{ alive: true, serverTimeMs }` instead of `alive`: the store
   * checks the client clock's rate with it (src/store/clock-rate.ts).
   */
  keepAlive(): Promise<'alive' | 'gone' | AliveAt>;
  /**
   * End the session on the server and delete its keys. Resolve once the server has ended it, or said that it no
   * longer has it; reject when that is not certain (no answer). Called again after a failure, and after the
   * session ended locally (`endOnServer`), so it must be safe to repeat.
   */
  revoke(): Promise<void>;
}

export interface ManagedSessionOptions {
  readonly id: string;
  /** TTL the server granted. */
  readonly ttlMs: number;
  readonly clock: Clock;
  readonly maxClockDriftRate: number;
  /** Clock time at which the request that created the session was sent. */
  readonly createdSendAtMs: number;
  readonly driver: SessionDriver;
  /** Upper bound for one keep-alive request. */
  readonly requestTimeoutMs: number;
  /** Called once when the session ends (the backend drops its bookkeeping). */
  readonly onEnd?: ((end: SessionEnd) => void) | undefined;
  /** Called with the server's clock reading of each acknowledged keep-alive that carried one. */
  readonly onServerTime?: ((sample: ServerClockSample) => void) | undefined;
}

export class ManagedSession implements Session {
  readonly id: string;
  readonly ttlMs: number;
  readonly ended: Promise<SessionEnd>;
  #state: SessionState = 'live';
  #safeUntilMs: number;
  readonly #opts: ManagedSessionOptions;
  readonly #listeners = new Set<(state: SessionState, cause?: unknown) => void>();
  #resolveEnded!: (end: SessionEnd) => void;
  #loopTimer: TimerHandle | undefined;
  #deadlineTimer: TimerHandle | undefined;
  #inFlight: Promise<void> | undefined;
  /** The server said it no longer has the session (a keep-alive answered "gone", or a revoke went through). */
  #goneOnServer = false;
  #ending: Promise<boolean> | undefined;
  /** Send time of the last acknowledged keep-alive (the deadline counts from it). */
  #lastAckedSendAtMs: number;
  /** Failed keep-alives in a row: the retry backoff grows with it, and is reset by an acknowledgement. */
  #failures = 0;

  constructor(opts: ManagedSessionOptions) {
    this.#opts = opts;
    this.id = opts.id;
    this.ttlMs = opts.ttlMs;
    this.#safeUntilMs = opts.createdSendAtMs + this.#usableTtlMs();
    this.#lastAckedSendAtMs = opts.createdSendAtMs;
    this.ended = new Promise((resolve) => {
      this.#resolveEnded = resolve;
    });
    this.#armDeadline();
    this.#scheduleNext();
  }

  get state(): SessionState {
    return this.#state;
  }

  get safeUntilMs(): number {
    return this.#safeUntilMs;
  }

  /** True while the session may be used to attach keys. */
  get usable(): boolean {
    return this.#state === 'live' || this.#state === 'suspect';
  }

  /** Throw SessionExpiredError unless the session is usable. */
  assertUsable(): void {
    if (!this.usable)
      throw new SessionExpiredError(this.id, `session ${this.id} is ${this.#state}; open a new session`);
  }

  onStateChange(listener: (state: SessionState, cause?: unknown) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  keepAlive(): Promise<void> {
    if (!this.usable) return Promise.reject(new SessionExpiredError(this.id));
    this.#inFlight ??= this.#sendKeepAlive().finally(() => {
      this.#inFlight = undefined;
    });
    return this.#inFlight;
  }

  async close(): Promise<void> {
    if (this.#state === 'closed' || this.#state === 'expired') return;
    this.#end('closed');
    try {
      await this.#opts.driver.revoke();
      this.#goneOnServer = true;
    } catch {
      // Best effort: the server expires the session after its TTL anyway (and endOnServer() may try again).
    }
  }

  endOnServer(): Promise<boolean> {
    if (this.usable) return Promise.resolve(false);
    if (this.#goneOnServer) return Promise.resolve(true);
    // One attempt at a time; each is bounded by the request timeout.
    this.#ending ??= withTimeout(
      Promise.resolve().then(() => this.#opts.driver.revoke()),
      this.#opts.requestTimeoutMs,
      this.#opts.clock,
    )
      .then(
        () => {
          this.#goneOnServer = true;
          return true;
        },
        () => false,
      )
      .finally(() => {
        this.#ending = undefined;
      });
    return this.#ending;
  }

  /**
   * Stop every timer without telling the server or any listener: the process
   * "died" (simulator, tests). The server expires the session by its TTL.
   */
  abandon(): void {
    this.#clearTimers();
    this.#state = 'expired';
  }

  /** The backend learned (e.g. from a watch or an error) that the server dropped the session. */
  markExpired(cause?: unknown): void {
    if (this.usable) this.#end('expired', cause);
  }

  #usableTtlMs(): number {
    return this.ttlMs * (1 - this.#opts.maxClockDriftRate);
  }

  /** The beat: a keep-alive goes out this long after the send time of the last acknowledged one. */
  #intervalMs(): number {
    return Math.max(50, Math.floor(this.ttlMs / 5));
  }

  /**
   * The next keep-alive, scheduled from the deadline rather than from the last reply: due one beat after the send
   * time of the last acknowledged keep-alive (the time the deadline counts from), so a reply that came late is
   * followed by the next keep-alive at once instead of a full beat later. While keep-alives fail, retry soon with a
   * short backoff that doubles up to TTL/10. Never more than one in flight (`keepAlive()` joins the one running).
   */
  #scheduleNext(): void {
    const clock = this.#opts.clock;
    let delayMs: number;
    if (this.#failures > 0) {
      const first = Math.max(10, Math.floor(this.ttlMs / 50));
      delayMs = Math.min(Math.max(first, Math.floor(this.ttlMs / 10)), first * 2 ** (this.#failures - 1));
    } else {
      // A gap of at least TTL/100 between keep-alives: a store slower than a beat is asked back to back, not in a spin.
      const minGapMs = Math.max(1, Math.floor(this.ttlMs / 100));
      delayMs = Math.max(minGapMs, this.#lastAckedSendAtMs + this.#intervalMs() - clock.now());
    }
    this.#schedule(delayMs);
  }

  #schedule(delayMs: number): void {
    if (this.#loopTimer !== undefined) this.#opts.clock.clearTimeout(this.#loopTimer);
    this.#loopTimer = this.#opts.clock.setTimeout(
      () => {
        this.#loopTimer = undefined;
        if (!this.usable) return;
        this.keepAlive().then(
          () => {
            if (this.usable) this.#scheduleNext();
          },
          () => {
            if (this.usable) this.#scheduleNext();
          },
        );
      },
      delayMs,
      BACKGROUND,
    );
  }

  #armDeadline(): void {
    const clock = this.#opts.clock;
    if (this.#deadlineTimer !== undefined) clock.clearTimeout(this.#deadlineTimer);
    this.#deadlineTimer = clock.setTimeout(
      () => {
        this.#deadlineTimer = undefined;
        if (!this.usable) return;
        if (clock.now() >= this.#safeUntilMs) {
          this.#end(
            'expired',
            new SessionExpiredError(
              this.id,
              `session ${this.id}: no keep-alive acknowledged within its TTL; treating it as expired`,
            ),
          );
        } else {
          this.#armDeadline();
        }
      },
      // At least 1 ms: a scaled clock can fire a hair early, and a zero delay would spin.
      Math.max(1, this.#safeUntilMs - clock.now()),
      BACKGROUND,
    );
  }

  async #sendKeepAlive(): Promise<void> {
    const clock = this.#opts.clock;
    const sentAt = clock.now();
    let result: 'alive' | 'gone' | AliveAt;
    try {
      result = await withTimeout(this.#opts.driver.keepAlive(), this.#opts.requestTimeoutMs, clock);
    } catch (cause) {
      this.#failures++;
      if (this.#state === 'live') this.#setState('suspect', cause);
      throw cause;
    }
    if (!this.usable) throw new SessionExpiredError(this.id);
    if (typeof result === 'object') {
      this.#opts.onServerTime?.({ sentAtMs: sentAt, receivedAtMs: clock.now(), serverMs: result.serverTimeMs });
      // The reading may have ended the session (the clock rate left its bound).
      if (!this.usable) throw new SessionExpiredError(this.id);
    }
    if (result === 'gone') {
      this.#goneOnServer = true;
      const err = new SessionExpiredError(this.id, `session ${this.id} no longer exists on the server`);
      this.#end('expired', err);
      throw err;
    }
    // Only a response that arrives before the current deadline may extend it:
    // if we were already past it, the server may have expired us meanwhile and
    // the session was ended locally above (usable is false).
    this.#failures = 0;
    if (sentAt > this.#lastAckedSendAtMs) this.#lastAckedSendAtMs = sentAt;
    const until = sentAt + this.#usableTtlMs();
    if (until > this.#safeUntilMs) {
      this.#safeUntilMs = until;
      this.#armDeadline();
    }
    if (this.#state === 'suspect') this.#setState('live');
  }

  #clearTimers(): void {
    const clock = this.#opts.clock;
    if (this.#loopTimer !== undefined) clock.clearTimeout(this.#loopTimer);
    if (this.#deadlineTimer !== undefined) clock.clearTimeout(this.#deadlineTimer);
    this.#loopTimer = undefined;
    this.#deadlineTimer = undefined;
  }

  #setState(state: SessionState, cause?: unknown): void {
    if (this.#state === state) return;
    this.#state = state;
    for (const l of [...this.#listeners]) {
      try {
        l(state, cause);
      } catch {
        // A throwing listener must not break the session.
      }
    }
  }

  #end(state: 'expired' | 'closed', cause?: unknown): void {
    this.#clearTimers();
    this.#setState(state, cause);
    const end: SessionEnd = cause === undefined ? { state } : { state, cause };
    this.#resolveEnded(end);
    this.#opts.onEnd?.(end);
  }
}
