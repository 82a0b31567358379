/**
 * One of several consumers of a single queue: exactly one of them is active (it holds the queue's lock), the
 * others stand by and take over when it leaves or dies.
 *
 *   npx tsx examples/single-active-consumer/consumer.ts --node ID [--store URL] [--amqp URL] [--queue NAME] [--ttl MS]
 */
import { parseArgs } from 'node:util';
import { openStore } from 'rebalancer';
import { joinConsumerGroup } from 'rebalancer/rabbitmq';

const { values: args } = parseArgs({
  options: {
    node: { type: 'string', default: `consumer-${process.pid}` },
    store: { type: 'string', default: 'sqlite:./rebalancer-example.db' },
    amqp: { type: 'string', default: 'amqp://guest:guest@127.0.0.1:5672' },
    queue: { type: 'string', default: 'sac-demo' },
    ttl: { type: 'string', default: '2000' },
  },
});

const store = await openStore(args.store);
const group = await joinConsumerGroup({
  store,
  group: 'sac-demo',
  node: { id: args.node },
  connection: args.amqp,
  queues: [args.queue],
  prefetch: 20,
  // How long after this process dies its standby takes over (plus detection): the lease's TTL.
  sessionTtlMs: Number(args.ttl),
  onMessage(msg, ctx) {
    console.log(`[${args.node}] consumed ${msg.content.toString('utf8')} (fencing token ${ctx.fencingToken})`);
  },
});
group.on('consuming', () => console.log(`[${args.node}] ACTIVE`));
group.on('queueStopped', () => console.log(`[${args.node}] standing by`));
group.on('error', ({ error, context }) => console.error(`[${args.node}] ${context}: ${String(error)}`));
console.log(`[${args.node}] standing by`);
const leave = (): void => {
  group
    .leave() // the standby takes over once this returns
    .finally(() => store.close()) // leave() does not close the store; an open store keeps the process alive
    .catch((error: unknown) => {
      console.error(`[${args.node}] leaving failed`, error);
      process.exitCode = 1;
    });
};
process.once('SIGINT', leave);
process.once('SIGTERM', leave);
