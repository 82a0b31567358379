/**
 * docs/rabbitmq.md: a consumer group whose messages update a PostgreSQL table, fenced: the UPDATE only applies
 * while the queue's fencing token is at least the last one that wrote the row, so a replaced owner's late write
 * changes nothing.
 *
 *   npx tsx examples/rabbitmq-consumer-group/producer.ts --queues 4   # declares orders-0…3 and publishes to them
 *   DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres npx tsx examples/docs/rabbitmq.ts
 *
 * Needs Redis (REBALANCER_STORE), RabbitMQ (AMQP_URL) and PostgreSQL (DATABASE_URL). SIGTERM (or Ctrl-C) leaves
 * the group, then closes the store and the database pool; the process exits.
 */
import pg from 'pg';
import { openStore } from 'rebalancer';
import { joinConsumerGroup } from 'rebalancer/rabbitmq';

const queues = ['orders-0', 'orders-1', 'orders-2', 'orders-3'];
const db = new pg.Pool({ connectionString: process.env['DATABASE_URL'] ?? 'postgres://app@127.0.0.1:5432/app' });
// One row per queue; `fence` is the highest fencing token that has written it.
await db.query('CREATE TABLE IF NOT EXISTS totals (queue text PRIMARY KEY, n bigint NOT NULL, fence bigint NOT NULL)');
await db.query('INSERT INTO totals SELECT q, 0, 0 FROM unnest($1::text[]) AS q ON CONFLICT DO NOTHING', [queues]);

const store = await openStore(process.env['REBALANCER_STORE'] ?? 'redis://127.0.0.1:6379'); // or sqlite:PATH, postgres://…, etcd://…, zk://…
const group = await joinConsumerGroup({
  store,
  group: 'orders',
  node: { id: process.env['HOSTNAME'] ?? 'node-1' },
  connection: process.env['AMQP_URL'] ?? 'amqp://guest:guest@127.0.0.1:5672', // or async () => ChannelModel
  queues, // or { list(signal), intervalMs? }, or omit (the group's registry decides)
  prefetch: 10,
  async onMessage(msg, { queue, fencingToken }) {
    const amount = Number(msg.content.toString('utf8')); // each message: a number to add to the queue's total
    const sql = 'UPDATE totals SET n = n + $1, fence = $2 WHERE queue = $3 AND fence <= $2';
    const { rowCount } = await db.query(sql, [amount, fencingToken, queue]);
    // Refused: a newer owner has written this row. Throwing requeues the message (for that owner), not acks it.
    if (rowCount === 0) throw new Error(`stale fencing token ${fencingToken} for ${queue}`);
  },
});
group.on('consuming', ({ queue, fencingToken }) => console.log('consuming', queue, fencingToken));
group.on('error', ({ error, context }) => console.error(`${context}: ${String(error)}`));
process.once('SIGTERM', () => {
  group
    .leave() // cancels the consumers, settles the messages in hand, hands the queues over
    .finally(() => Promise.all([store.close(), db.end()])) // leave() closes neither
    .catch((error: unknown) => {
      console.error('shutdown failed', error);
      process.exitCode = 1;
    });
});
