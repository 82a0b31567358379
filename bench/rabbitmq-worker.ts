/**
 * Worker process of `npm run bench -- rabbitmq` (not a benchmark by itself).
 *
 *   node --import tsx bench/rabbitmq-worker.ts group <storeUrl> <namespace> <amqpUrl> <queue> <nodeId> <ttlMs>
 *   node --import tsx bench/rabbitmq-worker.ts native <amqpUrl> <queue>
 *
 * `group`: a one-queue Rebalancer consumer group (single active consumer). `native`: a plain amqplib consumer
 * on a queue declared with RabbitMQ's own `x-single-active-consumer` (the peer). Reports on stdout, one JSON
 * object per line, with t = Date.now() (all processes on one host):
 *   {"ev":"ready"}       joined / consuming registered
 *   {"ev":"msg","t":…}   a message was consumed (and is acked)
 */
import { connect } from 'amqplib';
import { joinConsumerGroup } from '../src/integrations/rabbitmq/index.js';
import { openStore } from '../src/store/open.js';

function say(o: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify({ ...o, t: Date.now() })}\n`);
}

const [mode, ...rest] = process.argv.slice(2);
setInterval(() => undefined, 60_000); // stay alive until killed

if (mode === 'group') {
  const [url, namespace, amqpUrl, queue, nodeId, ttl] = rest as [string, string, string, string, string, string];
  const store = await openStore(url, { namespace });
  await joinConsumerGroup({
    store,
    group: 'bench-sac',
    node: { id: nodeId },
    connection: amqpUrl,
    queues: [queue],
    sessionTtlMs: Number(ttl),
    onMessage: () => say({ ev: 'msg' }),
  });
  say({ ev: 'ready' });
} else if (mode === 'native') {
  const [amqpUrl, queue] = rest as [string, string];
  const conn = await connect(amqpUrl);
  const ch = await conn.createChannel();
  await ch.prefetch(10);
  await ch.consume(
    queue,
    (m) => {
      if (m === null) return;
      say({ ev: 'msg' });
      ch.ack(m);
    },
    { noAck: false },
  );
  say({ ev: 'ready' });
} else {
  process.stderr.write('usage: rabbitmq-worker.ts group|native …\n');
  process.exit(2);
}
