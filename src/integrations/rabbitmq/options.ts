/**
 * Options of a RabbitMQ consumer group, validated up front (the group-member
 * options are validated by the runtime's own resolveOptions, called with them).
 */
import type { ChannelModel, ConsumeMessage } from 'amqplib';
import { InvalidArgumentError, LimitExceededError } from '../../errors.js';
import { validateResourceName } from '../../protocol/groups/keys.js';
import type { JoinOptions, ResourceSource } from '../../runtime/options.js';

/** What the message handler gets with each delivery. */
export interface MessageContext {
  readonly group: string;
  readonly nodeId: string;
  readonly queue: string;
  /**
   * Grows with every new owner of this queue. Write it with whatever the
   * message changes downstream (e.g. a `fence` column compared in the UPDATE),
   * so that a late write of a previous owner is refused there.
   */
  readonly fencingToken: number;
  /** Aborted when the queue is revoked, this node self-fences or leaves: finish or give up promptly. */
  readonly signal: AbortSignal;
  /** Cheap synchronous ownership check (monotonic clock); call it before each side effect of a long handler. */
  stillOwner(): boolean;
}

/**
 * Handles one message. When it resolves, the message is acked (if this node
 * still holds the queue's lock); when it throws, the message is requeued or
 * rejected (see `onError`). Messages of one queue are handled one at a time,
 * in delivery order.
 */
export type MessageHandler = (message: ConsumeMessage, ctx: MessageContext) => Promise<void> | void;

/**
 * An `amqp://` / `amqps://` URL (the group connects and reconnects itself), or
 * a function returning a new, connected ChannelModel (called again after each
 * connection loss; the group closes the models it got when it leaves).
 */
export type ConnectionSource = string | (() => Promise<ChannelModel>);

export interface ConsumeGroupOptions extends Omit<JoinOptions, 'handler' | 'resourceSource'> {
  readonly connection: ConnectionSource;
  /**
   * The queues to share. A list: the coordinator registers exactly these as
   * the group's resources (every node should pass the same list). A
   * ResourceSource: the coordinator calls `list()` every `intervalMs` and keeps
   * the group's resources in step with its answer (e.g. the broker's queues
   * matching a pattern). Omitted: the group's registry decides (GroupAdmin,
   * `rebalancer resources add`).
   */
  readonly queues?: readonly string[] | ResourceSource | undefined;
  readonly onMessage: MessageHandler;
  /** Unacknowledged deliveries per queue (basic.qos on the queue's channel; default 10, 1..65535). */
  readonly prefetch?: number | undefined;
  /**
   * A message whose handler throws: `requeue` (default) stops the queue's
   * consumer, waits `errorBackoffMs` and consumes again, so the message comes
   * back first and order is kept; `reject` rejects it without requeue (it goes
   * to the queue's dead-letter exchange, if any, else it is dropped) and goes on.
   */
  readonly onError?: 'requeue' | 'reject' | undefined;
  /** Pause before consuming again after a failed message (default 1 000 ms). */
  readonly errorBackoffMs?: number | undefined;
  /**
   * Consume with AMQP's exclusive flag (default true): the broker then refuses
   * a second consumer on the queue, so a new owner cannot start while a
   * previous owner's consumer still exists on the broker (a paused process, a
   * half-open connection); it retries with backoff until the broker drops it.
   * A second line of defence behind the lock, bought with liveness.
   */
  readonly exclusive?: boolean | undefined;
  /** Backoff between reconnects and channel re-opens (default 200 → 5 000 ms, with jitter). */
  readonly reconnect?: { readonly initialMs?: number | undefined; readonly maxMs?: number | undefined } | undefined;
  /**
   * AMQP heartbeat in seconds for URL connections whose URL has no
   * `heartbeat` parameter (default 10): how soon the broker notices a dead or
   * paused consumer (about two heartbeats) and requeues what it held.
   */
  readonly heartbeatS?: number | undefined;
  /** Bound on each broker operation (connect, open channel, consume, cancel, close; default 10 000 ms). */
  readonly operationTimeoutMs?: number | undefined;
  /** How long consumeGroup waits for the first broker connection before it fails (default 30 000 ms). */
  readonly connectTimeoutMs?: number | undefined;
}

export interface ResolvedConsumeOptions {
  readonly connection: ConnectionSource;
  readonly queues: ResourceSource | undefined;
  readonly onMessage: MessageHandler;
  readonly prefetch: number;
  readonly onError: 'requeue' | 'reject';
  readonly errorBackoffMs: number;
  readonly exclusive: boolean;
  readonly reconnectInitialMs: number;
  readonly reconnectMaxMs: number;
  readonly heartbeatS: number;
  readonly operationTimeoutMs: number;
  readonly connectTimeoutMs: number;
}

/** AMQP short strings (queue names) are at most 255 bytes. */
export const MAX_QUEUE_NAME_BYTES = 255;

export function validateQueueName(name: string): string {
  validateResourceName(name);
  const n = Buffer.byteLength(name, 'utf8');
  if (n > MAX_QUEUE_NAME_BYTES) {
    throw new LimitExceededError(
      'queue name bytes',
      n,
      MAX_QUEUE_NAME_BYTES,
      `queue name is ${n} UTF-8 bytes; AMQP allows at most ${MAX_QUEUE_NAME_BYTES}`,
    );
  }
  return name;
}

function num(name: string, v: number | undefined, fallback: number, min: number, max: number, int = false): number {
  const x = v ?? fallback;
  if (typeof x !== 'number' || !Number.isFinite(x) || x < min || x > max || (int && !Number.isInteger(x))) {
    throw new InvalidArgumentError(
      `${name} must be ${int ? 'an integer' : 'a number'} between ${min} and ${max}, got ${String(x)}`,
    );
  }
  return x;
}

/** Validate the RabbitMQ-specific options; throws InvalidArgumentError / LimitExceededError. */
export function resolveConsumeOptions(o: ConsumeGroupOptions): ResolvedConsumeOptions {
  if (o === null || typeof o !== 'object') throw new InvalidArgumentError('consumeGroup needs an options object');
  const connection = o.connection;
  if (typeof connection === 'string') {
    let url: URL;
    try {
      url = new URL(connection);
    } catch (cause) {
      throw new InvalidArgumentError('connection must be an amqp:// or amqps:// URL (or a function)', { cause });
    }
    if (url.protocol !== 'amqp:' && url.protocol !== 'amqps:') {
      throw new InvalidArgumentError(`connection URL must use amqp:// or amqps://, got ${url.protocol}//`);
    }
  } else if (typeof connection !== 'function') {
    throw new InvalidArgumentError(
      'connection must be an amqp:// URL or a function returning a connected amqplib ChannelModel',
    );
  }
  if (typeof o.onMessage !== 'function') {
    throw new InvalidArgumentError('onMessage must be a function (message, ctx) => Promise<void>');
  }
  let queues: ResourceSource | undefined;
  const q = o.queues;
  if (q === undefined) {
    queues = undefined;
  } else if (Array.isArray(q)) {
    const list = [...new Set((q as readonly string[]).map((n) => validateQueueName(n)))];
    if (list.length === 0) throw new InvalidArgumentError('queues must not be an empty list');
    // A fixed list needs syncing only when a coordinator takes over; re-checking now and then is cheap.
    queues = { list: () => list, intervalMs: 30_000 };
  } else if (q !== null && typeof q === 'object' && typeof (q as ResourceSource).list === 'function') {
    const source = q as ResourceSource;
    // Names from the source are validated by the registry sync (a bad one fails that sync, changing nothing).
    queues = source;
  } else {
    throw new InvalidArgumentError('queues must be a list of queue names or { list(signal), intervalMs?, timeoutMs? }');
  }
  const onError = o.onError ?? 'requeue';
  if (onError !== 'requeue' && onError !== 'reject') {
    throw new InvalidArgumentError(`onError must be 'requeue' or 'reject', got ${JSON.stringify(onError)}`);
  }
  const exclusive = o.exclusive ?? true;
  if (typeof exclusive !== 'boolean') throw new InvalidArgumentError('exclusive must be a boolean');
  const reconnectInitialMs = num('reconnect.initialMs', o.reconnect?.initialMs, 200, 1, 600_000);
  const reconnectMaxMs = num('reconnect.maxMs', o.reconnect?.maxMs, 5000, reconnectInitialMs, 3_600_000);
  return {
    connection,
    queues,
    onMessage: o.onMessage,
    prefetch: num('prefetch', o.prefetch, 10, 1, 65_535, true),
    onError,
    errorBackoffMs: num('errorBackoffMs', o.errorBackoffMs, 1000, 0, 3_600_000),
    exclusive,
    reconnectInitialMs,
    reconnectMaxMs,
    heartbeatS: num('heartbeatS', o.heartbeatS, 10, 0, 3600, true),
    operationTimeoutMs: num('operationTimeoutMs', o.operationTimeoutMs, 10_000, 1, 600_000),
    connectTimeoutMs: num('connectTimeoutMs', o.connectTimeoutMs, 30_000, 1, 3_600_000),
  };
}
