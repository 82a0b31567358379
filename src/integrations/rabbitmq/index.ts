/**
 * `rebalancer/rabbitmq`: Kafka-style consumer groups on RabbitMQ queues.
 *
 * A group's resources are queue names; each queue is consumed by exactly one
 * live node of the group at a time (prefetch, manual ack, one channel per
 * queue), and every message is handed the queue's fencing token. Needs the
 * optional peer dependency `amqplib` (2.x). Guarantees and what they assume:
 * docs/rabbitmq.md.
 */
export { joinConsumerGroup, ConsumerGroup, type ConsumerGroupEvents, type QueueAssignment } from './consumer-group.js';
export type { RabbitQueueEvents, SessionEndReason } from './queue-consumer.js';
export {
  MAX_QUEUE_NAME_BYTES,
  validateQueueName,
  type ConnectionSource,
  type ConsumerGroupOptions,
  type MessageContext,
  type MessageHandler,
} from './options.js';
export { BrokerUnavailableError } from '../../errors.js';
