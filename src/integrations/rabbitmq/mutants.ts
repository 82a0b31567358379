/**
 * Deliberately broken variants of the RabbitMQ consumer, switched on only by
 * the end-to-end test's worker (test/rabbitmq/worker.ts) to show that the
 * test's oracle catches a consumer that acts without ownership. Not exported
 * from `rebalancer/rabbitmq`; production code never sets them.
 */
export const RABBITMQ_MUTANTS = {
  'consume-after-revoke':
    'the consumer ignores stillOwner() and keeps consuming (and acking) after its queue is revoked; the handler returns at once',
} as const;

export type RabbitMutantName = keyof typeof RABBITMQ_MUTANTS;

export const activeRabbitMutants = new Set<RabbitMutantName>();
