/**
 * Options of a RabbitMQ consumer group, validated up front together with the
 * group-member options they extend (one reader, one unknown-option check).
 */
import type { ChannelModel, ConsumeMessage } from 'amqplib';
import { InvalidArgumentError, LimitExceededError } from '../../errors.js';
import { stringList, type OptionReader } from '../../options.js';
import { validateResourceName } from '../../protocol/groups/keys.js';
import {
  resolveGroupOptions,
  type JoinGroupOptions,
  type ResolvedGroupOptions,
  type ResourceHandler,
  type ResourceSource,
} from '../../runtime/groups/options.js';

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

export interface ConsumerGroupOptions extends Omit<JoinGroupOptions, 'handler' | 'resourceSource'> {
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
  /** How long joinConsumerGroup waits for the first broker connection before it fails (default 30 000 ms). */
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

/**
 * Read and check the RabbitMQ options from the reader joinConsumerGroup's options are read with (so one
 * unknown-option check covers the group's options and these); throws InvalidArgumentError / LimitExceededError.
 */
export function readConsumeOptions(r: OptionReader): ResolvedConsumeOptions {
  const connection = r.required<ConnectionSource>('connection', (v) => {
    if (typeof v === 'function') return undefined;
    if (typeof v !== 'string') return 'must be an amqp:// URL or a function returning a connected amqplib ChannelModel';
    let url: URL;
    try {
      url = new URL(v);
    } catch {
      return 'must be an amqp:// or amqps:// URL (or a function)';
    }
    return url.protocol === 'amqp:' || url.protocol === 'amqps:'
      ? undefined
      : `must use amqp:// or amqps://, got ${url.protocol}//`;
  });
  const onMessage = r.fn<MessageHandler>('onMessage');
  let queues: ResourceSource | undefined;
  const q = r.raw('queues');
  if (q === undefined) {
    queues = undefined;
  } else if (typeof q === 'string' || (typeof q === 'object' && q !== null && Symbol.iterator in q)) {
    const list = [...new Set(stringList(q, 'joinConsumerGroup options.queues').map((n) => validateQueueName(n)))];
    if (list.length === 0) throw new InvalidArgumentError('queues must not be an empty list');
    // A fixed list needs syncing only when a coordinator takes over; re-checking now and then is cheap.
    queues = { list: () => list, intervalMs: 30_000 };
  } else if (q !== null && typeof q === 'object' && typeof (q as ResourceSource).list === 'function') {
    // Names from the source are validated by the registry sync (a bad one fails that sync, changing nothing).
    queues = q as ResourceSource;
  } else {
    throw new InvalidArgumentError('queues must be a list of queue names or { list(signal), intervalMs?, timeoutMs? }');
  }
  const reconnect = r.object('reconnect');
  const reconnectInitialMs = reconnect?.ms('initialMs', 200, { min: 1, max: 600_000 }) ?? 200;
  const reconnectMaxMs = reconnect?.ms('maxMs', 5000, { min: reconnectInitialMs, max: 3_600_000 }) ?? 5000;
  reconnect?.done();
  return {
    connection,
    queues,
    onMessage,
    prefetch: r.integer('prefetch', 10, { min: 1, max: 65_535 }),
    onError: r.oneOf('onError', ['requeue', 'reject'] as const, 'requeue'),
    errorBackoffMs: r.ms('errorBackoffMs', 1000, { max: 3_600_000 }),
    exclusive: r.boolean('exclusive', true),
    reconnectInitialMs,
    reconnectMaxMs,
    heartbeatS: r.integer('heartbeatS', 10, { min: 0, max: 3600 }),
    operationTimeoutMs: r.ms('operationTimeoutMs', 10_000, { min: 1, max: 600_000 }),
    connectTimeoutMs: r.ms('connectTimeoutMs', 30_000, { min: 1, max: 3_600_000 }),
  };
}

/** Both halves of joinConsumerGroup's options, read and checked by one reader. */
export function resolveConsumerGroupOptions(
  options: unknown,
  handler: ResourceHandler,
): { readonly group: ResolvedGroupOptions; readonly rabbit: ResolvedConsumeOptions } {
  let rabbit: ResolvedConsumeOptions | undefined;
  const group = resolveGroupOptions(options, 'joinConsumerGroup options', (r) => {
    rabbit = readConsumeOptions(r);
    return { handler, resourceSource: rabbit.queues };
  });
  return { group, rabbit: rabbit! };
}
