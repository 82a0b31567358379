/**
 * README, "RabbitMQ consumer groups": four queues shared by every process that runs this file; each queue is
 * consumed by exactly one of them, and every message is handled with the queue's fencing token.
 *
 *   npx tsx examples/rabbitmq-consumer-group/producer.ts --queues 4   # declares orders-0…3 and publishes to them
 *   npx tsx examples/readme/rabbitmq.ts                               # from the repository root, in a few terminals
 *   HOSTNAME=node-2 npx tsx examples/readme/rabbitmq.ts
 *
 * Needs Redis and RabbitMQ (REBALANCER_STORE and AMQP_URL override the local defaults). SIGTERM (or Ctrl-C)
 * leaves the group: the queues move to the other processes, then the process exits.
 */
import { openStore } from 'rebalancer';
import { joinConsumerGroup } from 'rebalancer/rabbitmq';

const store = await openStore(process.env['REBALANCER_STORE'] ?? 'redis://127.0.0.1:6379');
const group = await joinConsumerGroup({
  store,
  group: 'orders',
  node: { id: process.env['HOSTNAME'] ?? 'node-1' },
  connection: process.env['AMQP_URL'] ?? 'amqp://guest:guest@127.0.0.1:5672',
  queues: ['orders-0', 'orders-1', 'orders-2', 'orders-3'],
  async onMessage(msg, { queue, fencingToken }) {
    await applyOrder(queue, JSON.parse(msg.content.toString()), fencingToken); // at least once; pass the token on
  },
});
group.on('consuming', ({ queue, fencingToken }) => console.log('consuming', queue, fencingToken));
group.on('error', ({ error, context }) => console.error(`${context}: ${String(error)}`));

function shutdown(): void {
  group
    .leave() // cancels the consumers, settles the messages in hand, hands the queues over
    .finally(() => store.close()) // leave() does not close the store; an open store keeps the process alive
    .catch((error: unknown) => {
      console.error('shutdown failed', error);
      process.exitCode = 1;
    });
}
process.once('SIGTERM', shutdown);
process.once('SIGINT', shutdown);

/** Stands in for the application's work: apply the order, passing the fencing token to what it writes to. */
async function applyOrder(queue: string, order: unknown, fencingToken: number): Promise<void> {
  console.log('applied', queue, JSON.stringify(order), 'fencing token', fencingToken);
}
