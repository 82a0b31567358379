/**
 * `npm run bench -- raft-transport [--json] [--quick]`
 *
 * Two Raft transports (src/raft/transport/) on loopback in this one process (sender and receiver share one event
 * loop and one core: figures are a lower bound of a two-process setup), authenticated, plain TCP. For each message
 * shape: messages/s and MB/s of encoded envelopes delivered, with a window of messages in flight (no drops).
 */
import type { Message } from '../src/raft/messages.js';
import { Transport, encodeEnvelope } from '../src/raft/transport/index.js';
import { round, table } from './stats.js';

interface Case {
  readonly name: string;
  readonly messages: number;
  readonly envelopeBytes: number;
  readonly seconds: number;
  readonly messagesPerSecond: number;
  readonly megabytesPerSecond: number;
  readonly frames: number;
  readonly cpuMs: number;
}

async function pair(onMessage: () => void): Promise<{ a: Transport; b: Transport }> {
  const secret = 'bench secret, long enough';
  const probe = await Transport.start({ id: 'b', clusterId: 'bench', secret, peers: {}, onMessage: () => undefined });
  const port = probe.port;
  await probe.close();
  const b = await Transport.start({
    id: 'b',
    clusterId: 'bench',
    secret,
    listen: { host: '127.0.0.1', port },
    peers: { a: { host: '127.0.0.1', port: 1 } },
    onMessage,
  });
  const a = await Transport.start({
    id: 'a',
    clusterId: 'bench',
    secret,
    peers: { b: { host: '127.0.0.1', port } },
    onMessage: () => undefined,
    maxQueuedMessages: 1 << 20,
    maxQueuedBytes: 1 << 30,
  });
  while (!a.stats('b').connected) await new Promise((r) => setTimeout(r, 5));
  return { a, b };
}

async function runCase(name: string, message: Message, total: number, window: number, perTurn: number): Promise<Case> {
  let received = 0;
  const { a, b } = await pair(() => received++);
  const envelopeBytes = encodeEnvelope({ groupId: 'group-0001', message }).byteLength;
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  let sent = 0;
  while (received < total) {
    if (sent < total && sent - received < window) {
      for (let i = 0; i < perTurn && sent < total; i++, sent++)
        a.send('b', `group-${String(sent % 64).padStart(4, '0')}`, message);
    }
    await new Promise((r) => setImmediate(r));
  }
  const seconds = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(c0);
  const frames = a.stats('b').sentFrames;
  if (a.stats('b').droppedFull > 0) throw new Error('the bench dropped messages: lower the window');
  await a.close();
  await b.close();
  return {
    name,
    messages: total,
    envelopeBytes,
    seconds: round(seconds, 3),
    messagesPerSecond: Math.round(total / seconds),
    megabytesPerSecond: round((total * envelopeBytes) / seconds / 1e6, 1),
    frames,
    cpuMs: Math.round((cpu.user + cpu.system) / 1000),
  };
}

export async function run(args: string[]): Promise<void> {
  const json = args.includes('--json');
  const scale = args.includes('--quick') ? 0.1 : 1;
  const n = (x: number): number => Math.max(1, Math.round(x * scale));
  const base = { from: 'a', to: 'b', term: 7 };
  const entries = (count: number, bytes: number) =>
    Array.from({ length: count }, (_, i) => ({
      term: 7,
      index: 1000 + i,
      type: 'normal' as const,
      data: new Uint8Array(bytes),
    }));
  const cases: Case[] = [];
  cases.push(
    await runCase(
      'heartbeat',
      { ...base, type: 'heartbeat', commit: 123_456, round: 99, quiesce: false },
      n(1_000_000),
      50_000,
      5_000,
    ),
  );
  cases.push(
    await runCase(
      'append, 1 entry of 16 B',
      { ...base, type: 'append', index: 999, logTerm: 7, commit: 998, entries: entries(1, 16) },
      n(500_000),
      50_000,
      5_000,
    ),
  );
  cases.push(
    await runCase(
      'append, 64 entries of 16 B',
      { ...base, type: 'append', index: 999, logTerm: 7, commit: 998, entries: entries(64, 16) },
      n(100_000),
      5_000,
      500,
    ),
  );
  cases.push(
    await runCase(
      'append, 1 entry of 64 KiB',
      { ...base, type: 'append', index: 999, logTerm: 7, commit: 998, entries: entries(1, 65_536) },
      n(20_000),
      256,
      64,
    ),
  );
  cases.push(
    await runCase(
      'snapshot chunk of 1 MiB',
      {
        ...base,
        type: 'snapshot',
        meta: { index: 999, term: 7, membership: { voters: ['a', 'b', 'c'], learners: [] } },
        offset: 0,
        totalBytes: 1 << 30,
        data: new Uint8Array(1 << 20),
      },
      n(2_000),
      16,
      4,
    ),
  );
  const out = [
    'Raft transport, two nodes on loopback in one process (one core for both ends)',
    table([
      ['messages', 'count', 'bytes each', 'msg/s', 'MB/s', 'frames', 'cpu'],
      ...cases.map((c) => [
        c.name,
        String(c.messages),
        String(c.envelopeBytes),
        String(c.messagesPerSecond),
        String(c.megabytesPerSecond),
        String(c.frames),
        `${c.cpuMs} ms`,
      ]),
    ]),
  ];
  process.stdout.write(`${out.join('\n')}\n`);
  if (json) process.stdout.write(`${JSON.stringify({ cases })}\n`);
}
