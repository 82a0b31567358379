/**
 * Kafka-style consumer groups on RabbitMQ queues: the queues are a resource
 * group's resources, each consumed by exactly one live node at a time, with
 * the group's fencing token handed to every message. The group protocol
 * (locks, self-fencing, rebalancing) is the runtime's; this module only turns
 * "you own queue Q with token T" into a consumer on Q and back.
 */
import { GroupMember, type AssignedResource, type GroupEvents } from '../../runtime/groups/member.js';
import { TypedEmitter } from '../../events.js';
import type { ResourceContext } from '../../runtime/groups/options.js';
import type { Clock } from '../../store/contract.js';
import { ConnectionManager, connector } from './connection.js';
import { resolveConsumerGroupOptions, type ConsumerGroupOptions } from './options.js';
import { runQueue, type QueueEnv, type RabbitQueueEvents } from './queue-consumer.js';

export interface ConsumerGroupEvents extends GroupEvents, RabbitQueueEvents {
  /** A broker connection was established (also after each reconnect). */
  connected: Record<string, never>;
  /** The broker connection was lost; every queue's consumer stops and resumes after reconnecting. */
  connectionLost: { readonly error: unknown };
  /** A connection attempt failed; the next one follows after a backoff. */
  connectionFailed: { readonly error: unknown; readonly attempt: number; readonly retryInMs: number };
}

export interface QueueAssignment extends AssignedResource {
  readonly queue: string;
  /** The broker has confirmed this node's consumer on the queue. */
  readonly consuming: boolean;
}

/** Every group event, forwarded by name (a Record, so that a new event cannot be forgotten here). */
const GROUP_EVENTS: Record<keyof GroupEvents, true> = {
  joined: true,
  coordinatorElected: true,
  coordinatorLost: true,
  rebalanceStarted: true,
  rebalanceCompleted: true,
  assigned: true,
  revoked: true,
  released: true,
  fenced: true,
  unfenced: true,
  sessionLost: true,
  handlerFailed: true,
  handlerStuck: true,
  error: true,
  left: true,
};

/**
 * Join a consumer group: resolves once this node is a member and connected
 * to the broker. Options are validated first (InvalidArgumentError /
 * LimitExceededError); no broker within `connectTimeoutMs` is a
 * BrokerUnavailableError.
 */
export async function joinConsumerGroup(options: ConsumerGroupOptions): Promise<ConsumerGroup> {
  const group = new ConsumerGroup(options);
  await group.start();
  return group;
}

export class ConsumerGroup extends TypedEmitter<ConsumerGroupEvents> {
  /** The underlying group member (for its events, `isCoordinator`, `leaseDeadlineMs`). */
  readonly member: GroupMember;
  readonly group: string;
  readonly nodeId: string;
  readonly #connections: ConnectionManager;
  readonly #env: QueueEnv;
  readonly #connectTimeoutMs: number;
  readonly #clock: Clock;
  /** `queue|token` of queues whose consumer the broker has confirmed. */
  readonly #consuming = new Set<string>();
  /** Sessions the member has lost: a lock taken under one of them is gone even before the member rejoins. */
  readonly #lostSessions = new Set<string>();
  #left = false;

  /** Validates the options; use joinConsumerGroup(), which also connects and joins. */
  constructor(options: ConsumerGroupOptions) {
    super({ held: true });
    const { group: resolved, rabbit } = resolveConsumerGroupOptions(options, (ctx: ResourceContext) =>
      runQueue(ctx, this.#env),
    );
    this.member = new GroupMember(resolved);
    this.group = resolved.group;
    this.nodeId = resolved.node.id;
    this.#connectTimeoutMs = rabbit.connectTimeoutMs;
    const clock = resolved.clock;
    this.#clock = clock;
    this.#connections = new ConnectionManager(
      connector(
        rabbit.connection,
        rabbit.heartbeatS,
        `rebalancer ${resolved.group}/${resolved.node.id}`,
        rabbit.operationTimeoutMs,
      ),
      {
        clock,
        random: resolved.random,
        initialMs: rabbit.reconnectInitialMs,
        maxMs: rabbit.reconnectMaxMs,
        timeoutMs: rabbit.operationTimeoutMs,
      },
      {
        connected: () => this.emit('connected', {}),
        lost: (error) => this.emit('connectionLost', { error }),
        failed: (error, attempt, retryInMs) => this.emit('connectionFailed', { error, attempt, retryInMs }),
      },
    );
    const member = this.member;
    this.#env = {
      clock,
      random: resolved.random,
      group: resolved.group,
      nodeId: resolved.node.id,
      options: rabbit,
      connections: this.#connections,
      sessionId: () => member.sessionId,
      leaseValid: (sessionId) =>
        sessionId !== undefined &&
        member.sessionId === sessionId &&
        !this.#lostSessions.has(sessionId) &&
        clock.now() < member.leaseDeadlineMs,
      emit: <K extends keyof RabbitQueueEvents>(event: K, payload: RabbitQueueEvents[K]) =>
        this.emit(event, payload as ConsumerGroupEvents[K]),
      setConsuming: (queue, token, on) => {
        if (on) this.#consuming.add(`${queue}|${token}`);
        else this.#consuming.delete(`${queue}|${token}`);
      },
    };
    for (const name of Object.keys(GROUP_EVENTS) as (keyof GroupEvents)[]) {
      member.on(name, (payload: GroupEvents[typeof name]) => this.emit(name, payload));
    }
    member.on('sessionLost', ({ sessionId }) => this.#lostSessions.add(sessionId));
  }

  /**
   * Connect, then join; use joinConsumerGroup(), which calls this (events are held until the caller has the
   * group). Connecting first: a node that cannot reach the broker should not take queues it cannot consume.
   */
  async start(): Promise<void> {
    try {
      await this.#connections.first(this.#connectTimeoutMs);
      await this.member.start();
    } catch (error) {
      await this.#connections.close();
      throw error;
    }
    this.#openAt(0);
  }

  /** The queues this node deals with now, with their fencing tokens and whether the broker confirmed the consumer. */
  assignment(): QueueAssignment[] {
    return this.member.assignment().map((a) => ({
      ...a,
      queue: a.resource,
      consuming: a.fencingToken !== undefined && this.#consuming.has(`${a.resource}|${a.fencingToken}`),
    }));
  }

  #openAt(delayMs: number): void {
    this.#clock.setTimeout(() => this.openEvents(), delayMs);
  }

  /** True while a broker connection is up. */
  get connected(): boolean {
    return this.#connections.connected;
  }

  /**
   * Leave the group: every queue's consumer is cancelled, the messages in hand
   * are handled and acked, prefetched ones are requeued, the locks are
   * released (the queues move to other nodes), then the broker connection is
   * closed. Bounded by the group's drainTimeoutMs.
   */
  async leave(): Promise<void> {
    if (this.#left) return;
    this.#left = true;
    try {
      await this.member.leave();
    } finally {
      await this.#connections.close();
    }
  }
}
