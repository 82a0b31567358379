/**
 * A consumer of the `orders` consumer group: run several of these, each gets a share of the queues.
 *
 *   npx tsx examples/rabbitmq-consumer-group/consumer.ts [--node ID] [--store URL] [--amqp URL] [--queues N]
 */
import { hostname } from 'node:os';
import { parseArgs } from 'node:util';
import { openStore } from 'rebalancer';
import { joinConsumerGroup } from 'rebalancer/rabbitmq';

const { values: args } = parseArgs({
  options: {
    node: { type: 'string', default: `${hostname()}-${process.pid}` },
    store: { type: 'string', default: 'sqlite:./rebalancer-example.db' },
    amqp: { type: 'string', default: 'amqp://guest:guest@127.0.0.1:5672' },
    queues: { type: 'string', default: '8' },
  },
});
const queues = Array.from({ length: Number(args.queues) }, (_, i) => `orders-${i}`);

const store = await openStore(args.store);
const group = await joinConsumerGroup({
  store,
  group: 'orders',
  node: { id: args.node },
  connection: args.amqp,
  queues, // the coordinator registers exactly these as the group's resources
  prefetch: 10,
  sessionTtlMs: 5000,
  async onMessage(msg, ctx) {
    const body = msg.content.toString('utf8');
    // A real handler writes somewhere; it passes ctx.fencingToken along, so that the target can refuse a
    // write from an owner that has been replaced (e.g. UPDATE … WHERE fence <= $token).
    console.log(`${ctx.queue} #${ctx.fencingToken}${msg.fields.redelivered ? ' (redelivered)' : ''}: ${body}`);
  },
});
group.on('consuming', ({ queue, fencingToken }) => console.log(`→ consuming ${queue} (fencing token ${fencingToken})`));
group.on('queueStopped', ({ queue }) => console.log(`← stopped ${queue}`));
group.on('connectionLost', ({ error }) => console.log(`broker connection lost (${String(error)}); reconnecting`));
group.on('error', ({ error, context }) => console.error(`${context}: ${String(error)}`));
console.log(`${args.node} joined group "orders" (store ${args.store}); Ctrl-C leaves gracefully`);

let leaving = false;
const leave = (): void => {
  if (leaving) return;
  leaving = true;
  console.log('leaving: handing the queues over…');
  group
    .leave()
    .finally(() => store.close()) // leave() does not close the store; an open store keeps the process alive
    .catch((error: unknown) => {
      console.error('leaving failed', error);
      process.exitCode = 1;
    });
};
process.on('SIGINT', leave);
process.on('SIGTERM', leave);
