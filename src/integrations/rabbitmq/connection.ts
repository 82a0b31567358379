/**
 * One broker connection per consumer group, shared by the queues' channels,
 * reconnected with backoff after it is lost. A lost connection closes every
 * channel on it; each queue's consumer notices that on its own channel and
 * asks for a connection again (see queue-consumer.ts).
 */
import type { ChannelModel } from 'amqplib';
import type * as Amqp from 'amqplib';
import { BrokerUnavailableError, ClosedError, InvalidArgumentError } from '../../errors.js';
import type { Clock } from '../../store/contract.js';
import { withTimeout as storeWithTimeout } from '../../store/timeout.js';
import type { ConnectionSource } from './options.js';

export interface ConnectionEvents {
  connected(): void;
  lost(error: unknown): void;
  failed(error: unknown, attempt: number, retryInMs: number): void;
}

/** Resolve `p`, or reject after `ms` (the operation itself is not cancelled: callers treat it as failed). */
export function withTimeout<T>(p: Promise<T>, ms: number, clock: Clock, what: string): Promise<T> {
  return storeWithTimeout(p, ms, clock, {
    onTimeout: () => new BrokerUnavailableError(`RabbitMQ: ${what} did not answer within ${ms} ms`),
    background: true,
  });
}

/** Sleep that ends early (resolving) when `signal` aborts. */
export function pause(clock: Clock, ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted === true) {
      resolve();
      return;
    }
    const done = (): void => {
      clock.clearTimeout(t);
      signal?.removeEventListener('abort', done);
      resolve();
    };
    const t = clock.setTimeout(done, ms, { background: true });
    signal?.addEventListener('abort', done, { once: true });
  });
}

/** Exponential backoff with jitter in [0.5, 1] of the step, capped. */
export function backoffMs(failures: number, initialMs: number, maxMs: number, random: () => number): number {
  const base = Math.min(maxMs, initialMs * 2 ** Math.min(30, Math.max(0, failures - 1)));
  return base * (0.5 + random() / 2);
}

/** Add `heartbeat=N` to a URL that does not set it (the broker's default of 60 s notices a dead peer late). */
export function withHeartbeat(url: string, heartbeatS: number): string {
  const u = new URL(url);
  if (!u.searchParams.has('heartbeat')) u.searchParams.set('heartbeat', String(heartbeatS));
  return u.toString();
}

/** A factory of connections from the group's `connection` option. */
export function connector(
  source: ConnectionSource,
  heartbeatS: number,
  connectionName: string,
  timeoutMs: number,
): () => Promise<ChannelModel> {
  if (typeof source === 'function') return source;
  const url = withHeartbeat(source, heartbeatS);
  let mod: Promise<typeof Amqp> | undefined;
  return async () => {
    mod ??= import('amqplib').catch((cause: unknown) => {
      mod = undefined;
      throw new InvalidArgumentError('rebalancer/rabbitmq needs the package "amqplib": run npm install amqplib', {
        cause,
      });
    });
    const amqp = await mod;
    // The connection name shows in the broker's management UI and `rabbitmqctl list_connections`.
    return amqp.connect(url, { timeout: timeoutMs, clientProperties: { connection_name: connectionName } });
  };
}

export class ConnectionManager {
  readonly #connect: () => Promise<ChannelModel>;
  readonly #clock: Clock;
  readonly #random: () => number;
  readonly #initialMs: number;
  readonly #maxMs: number;
  readonly #timeoutMs: number;
  readonly #events: ConnectionEvents;
  #current: ChannelModel | undefined;
  #connecting: Promise<ChannelModel> | undefined;
  /** Every model we got and have not seen closed: closed on close(). */
  readonly #open = new Set<ChannelModel>();
  #failures = 0;
  #closed = false;
  readonly #closing = new AbortController();

  constructor(
    connect: () => Promise<ChannelModel>,
    o: { clock: Clock; random: () => number; initialMs: number; maxMs: number; timeoutMs: number },
    events: ConnectionEvents,
  ) {
    this.#connect = connect;
    this.#clock = o.clock;
    this.#random = o.random;
    this.#initialMs = o.initialMs;
    this.#maxMs = o.maxMs;
    this.#timeoutMs = o.timeoutMs;
    this.#events = events;
  }

  /** True while a connection is up. */
  get connected(): boolean {
    return this.#current !== undefined;
  }

  /**
   * A live connection, connecting as needed (callers share one attempt; failed
   * attempts are retried with backoff). Rejects when `signal` aborts or the
   * manager is closed.
   */
  async get(signal: AbortSignal): Promise<ChannelModel> {
    for (;;) {
      if (this.#closed) throw new ClosedError('the RabbitMQ consumer group');
      if (signal.aborted) throw signal.reason instanceof Error ? signal.reason : new Error('aborted');
      if (this.#current !== undefined) return this.#current;
      this.#connecting ??= this.#attempt().finally(() => (this.#connecting = undefined));
      const attempt = this.#connecting;
      await new Promise<void>((resolve) => {
        const done = (): void => {
          signal.removeEventListener('abort', done);
          resolve();
        };
        signal.addEventListener('abort', done, { once: true });
        attempt.then(done, done);
      });
    }
  }

  /** Wait for the first connection, failing with BrokerUnavailableError after `timeoutMs`. */
  async first(timeoutMs: number): Promise<void> {
    const abort = new AbortController();
    let last: unknown;
    const t = this.#clock.setTimeout(() => abort.abort(), timeoutMs, { background: true });
    const off = this.#onFailure((e) => (last = e));
    try {
      await this.get(abort.signal);
    } catch (cause) {
      if (cause instanceof ClosedError) throw cause;
      throw new BrokerUnavailableError(
        `could not connect to RabbitMQ within ${timeoutMs} ms${last instanceof Error ? `: ${last.message}` : ''}`,
        { cause: last ?? cause },
      );
    } finally {
      this.#clock.clearTimeout(t);
      off();
    }
  }

  readonly #failureListeners = new Set<(e: unknown) => void>();
  #onFailure(l: (e: unknown) => void): () => void {
    this.#failureListeners.add(l);
    return () => this.#failureListeners.delete(l);
  }

  async #attempt(): Promise<ChannelModel> {
    if (this.#failures > 0) {
      await pause(
        this.#clock,
        backoffMs(this.#failures, this.#initialMs, this.#maxMs, this.#random),
        this.#closing.signal,
      );
    }
    if (this.#closed) throw new ClosedError('the RabbitMQ consumer group');
    let model: ChannelModel;
    try {
      model = await withTimeout(this.#connect(), this.#timeoutMs, this.#clock, 'connect');
    } catch (error) {
      this.#failures++;
      for (const l of this.#failureListeners) l(error);
      this.#events.failed(
        error,
        this.#failures,
        Math.round(backoffMs(this.#failures, this.#initialMs, this.#maxMs, () => 1)),
      );
      throw error;
    }
    if (this.#closed) {
      await model.close().catch(() => undefined);
      throw new ClosedError('the RabbitMQ consumer group');
    }
    const since = this.#clock.now();
    this.#open.add(model);
    // Without an 'error' listener an EventEmitter throws; the 'close' that follows is what we act on.
    model.on('error', () => undefined);
    model.on('close', (err?: Error) => {
      this.#open.delete(model);
      if (this.#current !== model) return;
      this.#current = undefined;
      // A connection that dies soon after it was made counts as a failed attempt (no hot reconnect loop).
      this.#failures = this.#clock.now() - since < 5000 ? this.#failures + 1 : 0;
      if (!this.#closed) this.#events.lost(err ?? new BrokerUnavailableError('RabbitMQ connection closed'));
    });
    this.#current = model;
    this.#events.connected();
    return model;
  }

  /** Close every connection we made and stop reconnecting. */
  async close(): Promise<void> {
    this.#closed = true;
    this.#closing.abort();
    this.#current = undefined;
    await Promise.all(
      [...this.#open].map((m) =>
        withTimeout(m.close(), this.#timeoutMs, this.#clock, 'close connection').catch(() => undefined),
      ),
    );
    this.#open.clear();
  }
}
