/**
 * Single active consumer, end to end: declares a queue, publishes a message every 20 ms, starts three
 * consumer processes, waits for one to be active, kill -9s it, and reports how long the queue went without a
 * consumer (kill → first message consumed by a standby), against the session TTL.
 *
 *   npx tsx examples/single-active-consumer/demo.ts [--store URL] [--amqp URL] [--ttl MS]
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { connect } from 'amqplib';

const dir = mkdtempSync(join(tmpdir(), 'sac-demo-'));
const { values: args } = parseArgs({
  options: {
    store: { type: 'string', default: `sqlite:${join(dir, 'store.db')}` },
    amqp: { type: 'string', default: 'amqp://guest:guest@127.0.0.1:5672' },
    ttl: { type: 'string', default: '2000' },
  },
});
const queue = `sac-demo-${process.pid}`;
const consumerScript = fileURLToPath(new URL('./consumer.ts', import.meta.url));

const conn = await connect(args.amqp);
const ch = await conn.createChannel();
await ch.assertQueue(queue, { durable: false });
let seq = 0;
const publisher = setInterval(() => ch.sendToQueue(queue, Buffer.from(`#${seq++}`)), 20);

let lastConsumer: string | undefined;
let onConsumed: ((node: string) => void) | undefined;
const procs = new Map<string, ChildProcess>();
for (const node of ['a', 'b', 'c']) {
  const p = spawn(
    process.execPath,
    [
      '--import',
      'tsx',
      consumerScript,
      '--node',
      node,
      '--store',
      args.store,
      '--amqp',
      args.amqp,
      '--queue',
      queue,
      '--ttl',
      args.ttl,
    ],
    { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env }, cwd: process.cwd() },
  );
  procs.set(node, p);
  createInterface({ input: p.stdout! }).on('line', (line) => {
    if (!line.includes('] consumed')) {
      console.log(line);
      return;
    }
    lastConsumer = node;
    onConsumed?.(node);
  });
}
const waitFor = (pred: (node: string) => boolean): Promise<string> =>
  new Promise((resolve) => {
    onConsumed = (node) => {
      if (!pred(node)) return;
      onConsumed = undefined;
      resolve(node);
    };
  });

const active = await waitFor(() => true);
await new Promise((r) => setTimeout(r, 1000));
const victim = lastConsumer ?? active;
console.log(`active consumer: ${victim}; kill -9 it`);
const t0 = Date.now();
procs.get(victim)!.kill('SIGKILL');
const next = await waitFor((node) => node !== victim);
const ms = Date.now() - t0;
console.log(
  `${next} took over: first message ${ms} ms after the kill (${(ms / Number(args.ttl)).toFixed(2)} × the TTL)`,
);

clearInterval(publisher);
for (const [node, p] of procs) if (node !== victim) p.kill('SIGTERM');
await Promise.all(
  [...procs.values()].map(
    (p) => new Promise((r) => (p.exitCode !== null || p.signalCode !== null ? r(null) : p.once('exit', r))),
  ),
);
await ch.deleteQueue(queue);
await conn.close();
rmSync(dir, { recursive: true, force: true });
