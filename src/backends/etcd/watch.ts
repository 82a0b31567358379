/**
 * One contract watcher = one etcd watch stream on a key range.
 *
 * etcd's own delivery on a healthy stream is exactly-once and ordered, so the
 * work here is noticing an unhealthy one: a stream that errors or ends, a
 * watch the server cancels (compaction, a slow watcher), and — the case a
 * silent partition produces — a stream that simply goes quiet. For the last,
 * the watcher asks for a progress notification every `progressIntervalMs`
 * and treats `requestTimeoutMs` without any message as a dead stream. Every
 * re-established stream starts at the current revision and is announced with
 * a `resync` hint, so nothing from the gap needs replaying (and a compacted
 * history can never block re-creation).
 */
import { castGrpcError, type IDuplexStream, type IWatchRequest, type IWatchResponse, type WatchClient } from 'etcd3';
import { ClosedError, StoreUnavailableError } from '../../errors.js';
import type { Clock, TimerHandle, WatchHint, Watcher } from '../../store/contract.js';
import { networkProblem, notAnswering } from '../../store/network.js';
import { sleep } from '../../store/clock.js';
import { withTimeout } from '../../store/timeout.js';

type WatchStream = IDuplexStream<IWatchRequest, IWatchResponse>;

export interface EtcdWatchOptions {
  readonly client: WatchClient;
  readonly clock: Clock;
  readonly requestTimeoutMs: number;
  /** "etcd at host:port…", for messages. */
  readonly where: string;
  readonly range: { readonly key: Buffer; readonly range_end: Buffer };
  readonly onHint: (hint: WatchHint) => void;
  /** Called once when the watcher is closed (the store drops its bookkeeping). */
  readonly onClose: (w: EtcdWatch) => void;
}

const FIRST_RETRY_MS = 50;
const MAX_RETRY_MS = 2000;

/**
 * End a stream. etcd3 resets all of a host's channels when a stream that is
 * still writable fails; ending it first avoids that for an orderly close,
 * while `resetHost` deliberately triggers it for a stream that went silent,
 * so that the next attempt dials a fresh connection instead of reusing a
 * dead one.
 */
function discard(stream: WatchStream, resetHost = false): void {
  try {
    if (!resetHost) stream.end();
    stream.cancel();
  } catch {
    // Already gone.
  }
}

export class EtcdWatch implements Watcher {
  readonly #o: EtcdWatchOptions;
  readonly #progressIntervalMs: number;
  #open = true;
  #stream: WatchStream | undefined;
  /** Generation of the current stream; events of older ones are ignored. */
  #gen = 0;
  #established = false;
  #lastHeardMs = 0;
  #tick: TimerHandle | undefined;
  #retry: TimerHandle | undefined;
  #retryMs = FIRST_RETRY_MS;
  #reconnecting = false;
  /** Fails the current stream (set while one exists). */
  #failCurrent: ((err: Error, resetHost: boolean) => void) | undefined;

  constructor(options: EtcdWatchOptions) {
    this.#o = options;
    this.#progressIntervalMs = Math.min(1000, Math.max(100, Math.floor(options.requestTimeoutMs / 4)));
  }

  /** Establish the first stream, retrying transient failures within one request timeout. */
  async start(): Promise<void> {
    const clock = this.#o.clock;
    const deadline = clock.now() + this.#o.requestTimeoutMs;
    let lastError: unknown;
    while (this.#open && clock.now() < deadline) {
      try {
        await this.#connect(deadline - clock.now());
        this.#scheduleTick();
        return;
      } catch (err) {
        lastError = err;
        const waitMs = Math.min(this.#retryMs, deadline - clock.now());
        this.#retryMs = Math.min(this.#retryMs * 2, MAX_RETRY_MS);
        if (waitMs > 0) await sleep(clock, waitMs);
      }
    }
    await this.close();
    if (lastError instanceof ClosedError) throw lastError;
    const problem = networkProblem(lastError) ?? `no watch within ${this.#o.requestTimeoutMs} ms`;
    throw new StoreUnavailableError(notAnswering(this.#o.where, problem), { cause: lastError, outcome: 'not-applied' });
  }

  async close(): Promise<void> {
    if (!this.#open) return;
    this.#open = false;
    this.#gen++;
    const clock = this.#o.clock;
    if (this.#tick !== undefined) clock.clearTimeout(this.#tick);
    if (this.#retry !== undefined) clock.clearTimeout(this.#retry);
    this.#tick = undefined;
    this.#retry = undefined;
    if (this.#stream !== undefined) discard(this.#stream);
    this.#stream = undefined;
    this.#o.onClose(this);
  }

  #deliver(hint: WatchHint): void {
    if (!this.#open) return;
    try {
      this.#o.onHint(hint);
    } catch {
      // A throwing consumer must not break the watch.
    }
  }

  /** Open a stream and create the watch; resolves with the revision it starts after. */
  async #connect(timeoutMs: number): Promise<number> {
    const gen = ++this.#gen;
    const clock = this.#o.clock;
    this.#established = false;
    const opening = this.#o.client.watch();
    let stream: WatchStream;
    try {
      stream = await withTimeout(opening, timeoutMs, clock);
    } catch (err) {
      // A stream that opens after we gave up would otherwise live on unattended.
      opening.then(
        (late) => discard(late),
        () => undefined,
      );
      throw err;
    }
    if (!this.#open || gen !== this.#gen) {
      discard(stream);
      throw new ClosedError('etcd watch');
    }
    this.#stream = stream;
    return new Promise<number>((resolve, reject) => {
      let created = false;
      const createTimer = clock.setTimeout(() => {
        const err = new StoreUnavailableError(`etcd watch was not created within ${timeoutMs} ms`, {
          outcome: 'not-applied',
        });
        fail(err, true);
      }, timeoutMs);
      const fail = (err: Error, resetHost = false): void => {
        clock.clearTimeout(createTimer);
        if (gen !== this.#gen) return;
        this.#gen++;
        this.#established = false;
        this.#failCurrent = undefined;
        discard(stream, resetHost);
        if (this.#stream === stream) this.#stream = undefined;
        if (created) this.#broken();
        else reject(err);
      };
      this.#failCurrent = fail;
      stream.on('data', (res: IWatchResponse) => {
        if (gen !== this.#gen || !this.#open) return;
        this.#lastHeardMs = clock.now();
        if (res.canceled) {
          // Compaction or a server-side cancel: re-create from the current revision.
          fail(
            new StoreUnavailableError(
              `etcd cancelled the watch: ${res.cancel_reason || `compacted at revision ${res.compact_revision}`}`,
              { outcome: 'not-applied' },
            ),
          );
          return;
        }
        if (res.created) {
          created = true;
          this.#established = true;
          clock.clearTimeout(createTimer);
          resolve(Number(res.header.revision));
          return;
        }
        if (res.events.length > 0) {
          let revision = 0;
          for (const e of res.events) revision = Math.max(revision, Number(e.kv.mod_revision));
          this.#deliver({ revision, reason: 'change' });
        }
        // Otherwise a progress notification: liveness only.
      });
      stream.on('error', (err: Error) => fail(castGrpcError(err)));
      stream.on('end', () => fail(new StoreUnavailableError('etcd watch stream ended', { outcome: 'not-applied' })));
      stream.write({ create_request: { key: this.#o.range.key, range_end: this.#o.range.range_end } });
    });
  }

  /** The established stream failed: reconnect until it works again, then say `resync`. */
  #broken(): void {
    if (!this.#open || this.#reconnecting) return;
    this.#reconnecting = true;
    this.#retryMs = FIRST_RETRY_MS;
    const attempt = (): void => {
      this.#retry = undefined;
      if (!this.#open) return;
      this.#connect(this.#o.requestTimeoutMs).then(
        (revision) => {
          this.#reconnecting = false;
          this.#retryMs = FIRST_RETRY_MS;
          this.#deliver({ revision, reason: 'resync' });
        },
        () => {
          if (!this.#open) return;
          this.#retryMs = Math.min(this.#retryMs * 2, MAX_RETRY_MS);
          this.#retry = this.#o.clock.setTimeout(attempt, this.#retryMs);
        },
      );
    };
    this.#retry = this.#o.clock.setTimeout(attempt, this.#retryMs);
  }

  #scheduleTick(): void {
    this.#tick = this.#o.clock.setTimeout(() => {
      this.#tick = undefined;
      if (!this.#open) return;
      this.#heartbeat();
      this.#scheduleTick();
    }, this.#progressIntervalMs);
  }

  #heartbeat(): void {
    const stream = this.#stream;
    if (!this.#established || stream === undefined) return;
    if (this.#o.clock.now() - this.#lastHeardMs > this.#o.requestTimeoutMs) {
      // Silent for a whole request timeout despite progress requests: the
      // connection is dead or partitioned. Tear it down and reconnect.
      this.#failCurrent?.(new StoreUnavailableError('etcd watch stream went silent', { outcome: 'not-applied' }), true);
      return;
    }
    try {
      stream.write({ progress_request: {} });
    } catch {
      // The stream is failing; its error handler reconnects.
    }
  }
}
