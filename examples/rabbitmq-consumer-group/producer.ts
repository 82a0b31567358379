/**
 * Declares the queues of the example and publishes sequence-numbered messages to them.
 *
 *   npx tsx examples/rabbitmq-consumer-group/producer.ts [--amqp URL] [--queues N] [--rate PER_SECOND] [--count N]
 *   npx tsx examples/rabbitmq-consumer-group/producer.ts --delete      # delete the example's queues
 */
import { parseArgs } from 'node:util';
import { connect } from 'amqplib';

const { values: args } = parseArgs({
  options: {
    amqp: { type: 'string', default: 'amqp://guest:guest@127.0.0.1:5672' },
    queues: { type: 'string', default: '8' },
    rate: { type: 'string', default: '20' },
    count: { type: 'string', default: '0' },
    delete: { type: 'boolean', default: false },
  },
});
const queues = Array.from({ length: Number(args.queues) }, (_, i) => `orders-${i}`);
const conn = await connect(args.amqp);
const ch = await conn.createConfirmChannel();
if (args.delete) {
  for (const q of queues) await ch.deleteQueue(q);
  console.log(`deleted ${queues.length} queues`);
  await conn.close();
  process.exit(0);
}
for (const q of queues) await ch.assertQueue(q, { durable: true });
console.log(`publishing to ${queues.join(', ')} at ${args.rate}/s per queue; Ctrl-C stops`);

let stop = false;
process.on('SIGINT', () => (stop = true));
const max = Number(args.count);
for (let seq = 0; !stop && (max === 0 || seq < max); seq++) {
  for (const q of queues) ch.sendToQueue(q, Buffer.from(JSON.stringify({ seq })), { persistent: true });
  await ch.waitForConfirms(); // counts as published once the broker confirmed it
  if (seq % 50 === 0) console.log(`published seq ${seq} to every queue`);
  await new Promise((r) => setTimeout(r, 1000 / Number(args.rate)));
}
await conn.close();
