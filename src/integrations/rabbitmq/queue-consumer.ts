/**
 * Consuming one queue for as long as this node owns it: the group handler of
 * one resource. Each (re)start of consumption is a QueueSession on its own
 * channel, so a channel error stops one queue, not all of them.
 *
 * The rules that keep one consumer per queue (see docs/rabbitmq.md):
 *  - a delivery is handled only if `stillOwner()` is true just before, checked
 *    per delivery: after a process pause, buffered deliveries are handled
 *    before any timer notices the lost lease, and this check is a
 *    monotonic-clock comparison that is right at once;
 *  - a handled message is acked only while the lock is still ours (not fenced,
 *    same session, lease deadline ahead); otherwise it stays unacked and the
 *    channel close requeues it for the new owner, who handles it again with a
 *    higher fencing token (at least once, never lost);
 *  - on revoke: cancel the consumer, let the message in hand finish and be
 *    acked, close the channel (the broker requeues what was prefetched but not
 *    handled), and only then return, which releases the lock.
 */
import type { Channel, ChannelModel, ConsumeMessage } from 'amqplib';
import { ClosedError } from '../../errors.js';
import type { ResourceContext } from '../../runtime/groups/options.js';
import type { Clock } from '../../store/contract.js';
import { backoffMs, pause, withTimeout, type ConnectionManager } from './connection.js';
import { activeRabbitMutants } from './mutants.js';
import type { MessageContext, ResolvedConsumeOptions } from './options.js';

/** Why a QueueSession ended. */
export type SessionEndReason =
  /** The handler's signal aborted (revoked, fenced, leaving): drained, done. */
  | 'stopped'
  /** stillOwner() turned false before the signal did (e.g. right after a process pause). */
  | 'lost-ownership'
  /** onMessage threw and onError is `requeue`. */
  | 'handler-failed'
  /** The channel (or its connection) closed under us. */
  | 'channel-closed'
  /** The broker cancelled the consumer (the queue was deleted). */
  | 'cancelled-by-broker'
  /** Opening the channel or consuming failed (missing queue, exclusive consumer elsewhere, timeout). */
  | 'open-failed';

export interface RabbitQueueEvents {
  /** The group started this node's handler for the queue (it holds the lock). */
  queueStarted: { readonly queue: string; readonly fencingToken: number };
  /** The broker confirmed the consumer (basic.consume-ok). */
  consuming: { readonly queue: string; readonly fencingToken: number };
  /** Consumption ended for one reason or another; for `stopped` the handler returns next. */
  consumerEnded: {
    readonly queue: string;
    readonly fencingToken: number;
    readonly reason: SessionEndReason;
    readonly error: unknown;
    /** Deliveries left unacknowledged (the broker requeues them): handled but not acked / never handled. */
    readonly requeuedHandled: number;
    readonly requeuedUnhandled: number;
  };
  /** The handler is about to return: the lock is released right after. */
  queueStopped: { readonly queue: string; readonly fencingToken: number };
  /** onMessage threw. */
  messageFailed: {
    readonly queue: string;
    readonly fencingToken: number;
    readonly error: unknown;
    readonly action: 'requeue' | 'reject';
  };
}

export interface QueueEnv {
  readonly clock: Clock;
  readonly random: () => number;
  readonly group: string;
  readonly nodeId: string;
  readonly options: ResolvedConsumeOptions;
  readonly connections: ConnectionManager;
  /** The member's current session id. */
  sessionId(): string | undefined;
  /**
   * Whether the lock taken under `sessionId` is still ours: unlike
   * stillOwner(), this stays true after a revoke (the lock is held until the
   * handler returns), so the message in hand can still be acked.
   */
  leaseValid(sessionId: string | undefined): boolean;
  emit<K extends keyof RabbitQueueEvents>(event: K, payload: RabbitQueueEvents[K]): void;
  setConsuming(queue: string, fencingToken: number, consuming: boolean): void;
}

/** The group handler for one queue. */
export async function runQueue(ctx: ResourceContext, env: QueueEnv): Promise<void> {
  const broken = activeRabbitMutants.has('consume-after-revoke');
  const { resource: queue, fencingToken } = ctx;
  const o = env.options;
  const sessionId = env.sessionId();
  env.emit('queueStarted', { queue, fencingToken });
  let failures = 0;
  try {
    while (!ctx.signal.aborted) {
      if (!broken && !ctx.stillOwner()) {
        // The signal follows within moments (the member's fencing timer); consume nothing meanwhile.
        await pause(env.clock, 50, ctx.signal);
        continue;
      }
      let conn: ChannelModel;
      try {
        conn = await env.connections.get(ctx.signal);
      } catch (error) {
        if (ctx.signal.aborted) break;
        // Closed: the group is shutting down; the signal follows.
        await pause(env.clock, error instanceof ClosedError ? 1000 : 100, ctx.signal);
        continue;
      }
      const session = new QueueSession(conn, ctx, env, () => env.leaseValid(sessionId), broken);
      const running = session.run();
      // The broken variant returns as soon as it is revoked and leaves its consumer running.
      const outcome = broken
        ? await Promise.race([running, new Promise<undefined>((r) => onAbort(ctx.signal, () => r(undefined)))])
        : await running;
      if (outcome === undefined) break;
      env.emit('consumerEnded', {
        queue,
        fencingToken,
        reason: outcome.reason,
        error: outcome.error,
        requeuedHandled: outcome.requeuedHandled,
        requeuedUnhandled: outcome.requeuedUnhandled,
      });
      if (outcome.reason === 'stopped') break;
      // A session that handled something was healthy: start the backoff again from its first step.
      failures = outcome.handled > 0 ? 1 : failures + 1;
      const delay =
        outcome.reason === 'handler-failed'
          ? o.errorBackoffMs
          : outcome.reason === 'lost-ownership'
            ? 0
            : backoffMs(failures, o.reconnectInitialMs, o.reconnectMaxMs, env.random);
      await pause(env.clock, delay, ctx.signal);
    }
  } finally {
    env.setConsuming(queue, fencingToken, false);
    env.emit('queueStopped', { queue, fencingToken });
  }
}

function onAbort(signal: AbortSignal, fn: () => void): void {
  if (signal.aborted) fn();
  else signal.addEventListener('abort', fn, { once: true });
}

interface SessionOutcome {
  readonly reason: SessionEndReason;
  readonly error: unknown;
  readonly handled: number;
  readonly requeuedHandled: number;
  readonly requeuedUnhandled: number;
}

/** One channel, one consumer, for one queue, until it ends (see SessionEndReason). */
class QueueSession {
  readonly #conn: ChannelModel;
  readonly #ctx: ResourceContext;
  readonly #env: QueueEnv;
  readonly #leaseValid: () => boolean;
  readonly #broken: boolean;
  readonly #mctx: MessageContext;
  #ch: Channel | undefined;
  #tag: string | undefined;
  /** Delivered, not yet handled (in delivery order; sequential handling keeps the queue's order). */
  #buffer: ConsumeMessage[] = [];
  #pumping: Promise<void> | undefined;
  /** Set by the first end reason: no new message is started after it. */
  #end: { reason: SessionEndReason } | undefined;
  #channelClosed = false;
  #brokerCancelled = false;
  #error: unknown;
  #handled = 0;
  #handledUnacked = 0;
  #wake: () => void = () => undefined;
  readonly #ended: Promise<void>;

  constructor(conn: ChannelModel, ctx: ResourceContext, env: QueueEnv, leaseValid: () => boolean, broken: boolean) {
    this.#conn = conn;
    this.#ctx = ctx;
    this.#env = env;
    this.#leaseValid = leaseValid;
    this.#broken = broken;
    this.#ended = new Promise((resolve) => (this.#wake = resolve));
    this.#mctx = {
      group: env.group,
      nodeId: env.nodeId,
      queue: ctx.resource,
      fencingToken: ctx.fencingToken,
      signal: ctx.signal,
      stillOwner: () => ctx.stillOwner(),
    };
  }

  #finish(reason: SessionEndReason): void {
    if (this.#end !== undefined) return;
    this.#end = { reason };
    this.#wake();
  }

  async run(): Promise<SessionOutcome> {
    const { clock, options: o } = this.#env;
    const ctx = this.#ctx;
    const stop = (): void => this.#finish('stopped');
    if (!this.#broken) onAbort(ctx.signal, stop);
    try {
      try {
        const ch = await withTimeout(this.#conn.createChannel(), o.operationTimeoutMs, clock, 'open channel');
        this.#ch = ch;
        // Without an 'error' listener the emitter throws; the 'close' that follows ends the session.
        ch.on('error', (error: Error) => (this.#error ??= error));
        ch.on('close', () => {
          this.#channelClosed = true;
          // Closed before consume-ok: the broker refused the consumer (no such queue, exclusive use elsewhere).
          this.#finish(this.#tag === undefined ? 'open-failed' : 'channel-closed');
        });
        if (this.#end === undefined) {
          await withTimeout(ch.prefetch(o.prefetch), o.operationTimeoutMs, clock, 'basic.qos');
        }
        // Connecting may have taken long: check again right before the broker starts delivering.
        if (this.#end === undefined && !this.#broken && !ctx.stillOwner()) this.#finish('lost-ownership');
        if (this.#end === undefined) {
          const ok = await withTimeout(
            ch.consume(ctx.resource, (m) => this.#onDelivery(m), { noAck: false, exclusive: o.exclusive }),
            o.operationTimeoutMs,
            clock,
            'basic.consume',
          );
          this.#tag = ok.consumerTag;
          if (this.#end === undefined) {
            this.#env.setConsuming(ctx.resource, ctx.fencingToken, true);
            this.#env.emit('consuming', { queue: ctx.resource, fencingToken: ctx.fencingToken });
          }
        }
      } catch (error) {
        this.#error ??= error;
        this.#finish('open-failed');
      }
      await this.#ended;
      this.#env.setConsuming(ctx.resource, ctx.fencingToken, false);
      const requeuedUnhandled = await this.#shutdown();
      return {
        reason: this.#end!.reason,
        error: this.#error,
        handled: this.#handled,
        requeuedHandled: this.#handledUnacked,
        requeuedUnhandled,
      };
    } finally {
      ctx.signal.removeEventListener('abort', stop);
    }
  }

  #onDelivery(msg: ConsumeMessage | null): void {
    if (msg === null) {
      // basic.cancel from the broker: the queue was deleted (or a failover of a mirrored queue).
      this.#brokerCancelled = true;
      this.#finish('cancelled-by-broker');
      return;
    }
    this.#buffer.push(msg);
    this.#pumping ??= this.#pump().finally(() => (this.#pumping = undefined));
  }

  async #pump(): Promise<void> {
    const ctx = this.#ctx;
    const o = this.#env.options;
    const ch = this.#ch!;
    while (this.#buffer.length > 0 && (this.#end === undefined || this.#broken)) {
      if (this.#broken && this.#channelClosed) return;
      // Checked per delivery, synchronously before the handler: see the file comment.
      if (!this.#broken && (ctx.signal.aborted || !ctx.stillOwner())) {
        this.#finish(ctx.signal.aborted ? 'stopped' : 'lost-ownership');
        return;
      }
      const msg = this.#buffer.shift()!;
      let failed = false;
      let error: unknown;
      try {
        await o.onMessage(msg, this.#mctx);
      } catch (e) {
        failed = true;
        error = e;
      }
      this.#handled++;
      // The message in hand is settled even when the session is ending (a revoke waits for exactly this).
      const ours = this.#broken || this.#leaseValid();
      if (!failed && ours) {
        settle(() => ch.ack(msg));
      } else if (!failed) {
        // Handled, but the lock may be gone: leave it unacked, the channel close requeues it for the new owner.
        this.#handledUnacked++;
        this.#finish('lost-ownership');
      } else {
        this.#env.emit('messageFailed', {
          queue: ctx.resource,
          fencingToken: ctx.fencingToken,
          error,
          action: o.onError,
        });
        if (o.onError === 'reject' && ours) {
          settle(() => ch.reject(msg, false));
        } else {
          // Requeue by closing the channel: the message and everything prefetched after it go back in order.
          this.#handledUnacked++;
          this.#finish(ours ? 'handler-failed' : 'lost-ownership');
        }
      }
    }
  }

  /** Stop the consumer, let the message in hand settle, close the channel. Returns the unhandled count. */
  async #shutdown(): Promise<number> {
    const { clock, options: o } = this.#env;
    const ch = this.#ch;
    if (ch !== undefined && !this.#channelClosed && this.#tag !== undefined && !this.#brokerCancelled) {
      await withTimeout(ch.cancel(this.#tag), o.operationTimeoutMs, clock, 'basic.cancel').catch((error: unknown) => {
        this.#error ??= error;
      });
    }
    // Not bounded here on purpose: returning while onMessage still runs would release the lock under it. The
    // member reports a handler that does not stop within drainTimeoutMs as stuck (onStuckHandler decides).
    if (this.#pumping !== undefined) await this.#pumping;
    const unhandled = this.#buffer.length;
    this.#buffer = [];
    if (ch !== undefined && !this.#channelClosed) {
      // close-ok means the broker has requeued every unacked delivery of this channel, before the lock goes.
      await withTimeout(ch.close(), o.operationTimeoutMs, clock, 'channel.close').catch((error: unknown) => {
        this.#error ??= error;
      });
    }
    return unhandled;
  }
}

/** ack / reject on a channel that may have closed meanwhile (then the broker requeues the message anyway). */
function settle(fn: () => void): void {
  try {
    fn();
  } catch {
    // IllegalOperationError: channel closed.
  }
}
