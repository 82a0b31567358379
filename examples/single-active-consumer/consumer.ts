/**
 * One of several consumers of a single queue: exactly one of them is active (it holds the queue's lock), the
 * others stand by and take over when it leaves or dies.
 *
 *   npx tsx examples/single-active-consumer/consumer.ts --node ID [--store URL] [--amqp URL] [--queue NAME] [--ttl MS]
 *
 * In an application, import from 'rebalancer' and 'rebalancer/rabbitmq' instead of ../../src.
 */
import { parseArgs } from 'node:util';
import { openStore } from '../../src/index.js';
import { joinConsumerGroup } from '../../src/integrations/rabbitmq/index.js';

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
console.log(`[${args.node}] standing by`);
const leave = (): void => void group.leave().then(() => process.exit(0));
process.on('SIGINT', leave);
process.on('SIGTERM', leave);
