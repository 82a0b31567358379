/**
 * One consumer process for test/rabbitmq/consumer-group.test.ts.
 * Usage: node --import tsx worker.ts <storeUrl> <namespace> <nodeId> <oracleFile> <amqpUrl> <queue,queue,…>
 *
 * The test's oracle lives outside the library: this process appends JSON lines
 * to the shared oracle file (O_APPEND, one small write per line, so the file's
 * line order is the order in which things happened on this host):
 *   {k:'start', q, node, token}      the group started this node's handler for queue q (lock held)
 *   {k:'consuming', q, node, token}  the broker confirmed the consumer
 *   {k:'msg', q, seq, node, token, red}  a message was processed (this line IS the side effect)
 *   {k:'ended', q, node, token, reason, rh, ru}  a consumer session ended; rh/ru: handled/unhandled left unacked
 *   {k:'stop', q, node, token}       the handler returns next (the lock is released after it)
 *   {k:'fenced'|'sessionLost', node} the member's self-fencing / session loss
 *   {k:'connectionLost', node}       the broker connection was lost (the group reconnects)
 * Each line also has t = Date.now(), for people reading it.
 *
 * SIGTERM: leave the group (consumer.leave()), close the store, exit 0.
 * SIGUSR2: close the current broker connection (its channels close; unacked messages are requeued).
 * Events go to stdout as JSON lines (the test sends them to a log file).
 *
 * REBALANCER_TEST_BROKEN_CONSUMER=consume-after-revoke switches on the adapter's deliberately broken variant
 * (src/integrations/rabbitmq/mutants.ts) and consumes without AMQP's exclusive flag, so that the test can show
 * that its checker catches a consumer that keeps consuming after its queue was revoked.
 */
import { appendFileSync } from 'node:fs';
import { connect, type ChannelModel } from 'amqplib';
import { setTimeout as sleep } from 'node:timers/promises';
import { ConsumerGroup, type ConsumerGroupEvents } from '../../src/integrations/rabbitmq/index.js';
import { activeRabbitMutants } from '../../src/integrations/rabbitmq/mutants.js';
import { openStore } from '../../src/store/open.js';

const [url, namespace, nodeId, oracleFile, amqpUrl, queueList] = process.argv.slice(2);
if (
  url === undefined ||
  namespace === undefined ||
  nodeId === undefined ||
  oracleFile === undefined ||
  amqpUrl === undefined ||
  queueList === undefined
) {
  process.stderr.write('usage: worker.ts <storeUrl> <namespace> <nodeId> <oracleFile> <amqpUrl> <queues>\n');
  process.exit(2);
}
const GROUP = process.env['REBALANCER_TEST_GROUP'] ?? 'consumers';
const TTL_MS = Number(process.env['REBALANCER_TEST_TTL_MS'] ?? 2000);
const BROKEN = process.env['REBALANCER_TEST_BROKEN_CONSUMER'] === 'consume-after-revoke';
if (BROKEN) activeRabbitMutants.add('consume-after-revoke');

function oracle(line: Record<string, unknown>): void {
  appendFileSync(oracleFile!, `${JSON.stringify({ ...line, node: nodeId, t: Date.now() })}\n`);
}

function say(what: string, detail: unknown = {}): void {
  process.stdout.write(`${JSON.stringify({ t: Date.now(), node: nodeId, what, detail }, replacer)}\n`);
}

function replacer(_key: string, value: unknown): unknown {
  return value instanceof Error ? { name: value.name, message: value.message } : value;
}

let current: ChannelModel | undefined;
const store = await openStore(url, { namespace });
const consumer = new ConsumerGroup({
  store,
  group: GROUP,
  node: { id: nodeId },
  // The factory form (not the URL), so that SIGUSR2 can drop the live connection.
  connection: async () => {
    const url = new URL(amqpUrl);
    url.searchParams.set('heartbeat', '10');
    current = await connect(url.toString());
    return current;
  },
  queues: queueList.split(','),
  prefetch: 5,
  exclusive: !BROKEN,
  sessionTtlMs: TTL_MS,
  drainTimeoutMs: 5000,
  reconnect: { initialMs: 100, maxMs: 1000 },
  async onMessage(msg, ctx) {
    const { seq } = JSON.parse(msg.content.toString('utf8')) as { seq: number };
    oracle({ k: 'msg', q: ctx.queue, seq, token: ctx.fencingToken, red: msg.fields.redelivered });
    // A little work after the side effect, so that a pause or kill can fall between it and the ack.
    await sleep(Math.floor(Math.random() * 4));
  },
});

consumer.on('queueStarted', ({ queue, fencingToken }) => oracle({ k: 'start', q: queue, token: fencingToken }));
consumer.on('consuming', ({ queue, fencingToken }) => oracle({ k: 'consuming', q: queue, token: fencingToken }));
consumer.on('consumerEnded', (e) =>
  oracle({
    k: 'ended',
    q: e.queue,
    token: e.fencingToken,
    reason: e.reason,
    rh: e.requeuedHandled,
    ru: e.requeuedUnhandled,
    error: e.error instanceof Error ? e.error.message : undefined,
  }),
);
consumer.on('queueStopped', ({ queue, fencingToken }) => oracle({ k: 'stop', q: queue, token: fencingToken }));
consumer.on('fenced', () => oracle({ k: 'fenced' }));
consumer.on('sessionLost', () => oracle({ k: 'sessionLost' }));
consumer.on('connectionLost', () => oracle({ k: 'connectionLost' }));

// SIGUSR2: drop the broker connection (as a broker restart or network failure would); the group reconnects.
process.on('SIGUSR2', () => {
  say('dropping connection');
  void current?.close().catch(() => undefined);
});

const events: (keyof ConsumerGroupEvents)[] = [
  'joined',
  'coordinatorElected',
  'rebalanceStarted',
  'assigned',
  'revoked',
  'released',
  'fenced',
  'unfenced',
  'sessionLost',
  'handlerStuck',
  'error',
  'connected',
  'connectionLost',
  'connectionFailed',
  'consumerEnded',
  'messageFailed',
];
for (const e of events) consumer.on(e, (detail: unknown) => say(e, detail));
await consumer.start();
say('ready', { sessionId: consumer.member.sessionId });

let leaving = false;
process.on('SIGTERM', () => {
  if (leaving) return;
  leaving = true;
  say('sigterm');
  void (async () => {
    try {
      await consumer.leave();
      await store.close();
      say('exit');
      process.exit(0);
    } catch (error) {
      say('leaveFailed', { error });
      process.exit(1);
    }
  })();
});

// Event-loop stalls explain missed keep-alives; the interval also keeps the process alive until SIGTERM.
let lastTick = Date.now();
setInterval(() => {
  const now = Date.now();
  if (now - lastTick > 700) say('eventLoopStall', { ms: now - lastTick - 200 });
  lastTick = now;
}, 200);
