/**
 * `npm run bench -- raft-log [--json] [--seconds N] [--groups 1,100] [--bytes 100]`
 *
 * The node-wide Raft write-ahead log on the real file system (a temporary directory under ./.tmp, removed after):
 * G groups each persist one entry plus its hard state at a time, as fast as their previous persist returns, for
 * N seconds per case. Reported: persists (appends) per second, fdatasyncs per second, entries covered per fsync,
 * persist latency p50/p99. The reference is the disk's own rate of `write 100 bytes + fdatasync` in one file (what
 * one group could reach without group commit, and the ceiling of syncs per second).
 */
import { mkdir, mkdtemp, open, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { Entry } from '../src/raft/messages.js';
import { FsDisk, Wal } from '../src/raft/wal/index.js';
import { round, stats, table } from './stats.js';

function arg(args: string[], name: string, fallback: string): string {
  const i = args.indexOf(name);
  return i >= 0 ? (args[i + 1] ?? fallback) : fallback;
}

async function rawSyncRate(dir: string, seconds: number): Promise<number> {
  const h = await open(join(dir, 'raw'), 'a');
  const data = new Uint8Array(100);
  let n = 0;
  const end = performance.now() + seconds * 1000;
  while (performance.now() < end) {
    await h.write(data);
    await h.datasync();
    n++;
  }
  await h.close();
  return n / seconds;
}

async function runCase(dir: string, groups: number, seconds: number, bytes: number) {
  const caseDir = await mkdtemp(join(dir, `g${groups}-`));
  const wal = await Wal.open(await FsDisk.open(caseDir));
  const payload = new Uint8Array(bytes).fill(7);
  const latencies: number[] = [];
  let stop = false;
  const end = performance.now() + seconds * 1000;
  const t0 = performance.now();
  const before = { ...wal.stats };
  const writer = async (gi: number): Promise<void> => {
    const g = wal.group(`group-${gi}`, { voters: ['a'], learners: [] });
    let index = 0;
    while (!stop) {
      index++;
      const e: Entry = { index, term: 1, type: 'normal', data: payload };
      const s = performance.now();
      await g.persist({ entries: [e], hardState: { term: 1, vote: 'a', commit: index - 1 } });
      latencies.push(performance.now() - s);
      if (performance.now() >= end) stop = true;
    }
  };
  await Promise.all(Array.from({ length: groups }, (_, i) => writer(i)));
  const elapsed = (performance.now() - t0) / 1000;
  const persists = wal.stats.persists - before.persists;
  const syncs = wal.stats.batches - before.batches;
  await wal.close();
  const l = stats(latencies);
  return {
    groups,
    persistsPerS: round(persists / elapsed, 0),
    fsyncsPerS: round(syncs / elapsed, 0),
    entriesPerFsync: round(persists / Math.max(1, syncs), 1),
    p50Ms: l.p50Ms,
    p99Ms: l.p99Ms,
  };
}

export async function run(args: string[]): Promise<void> {
  const json = args.includes('--json');
  const seconds = Number(arg(args, '--seconds', '3'));
  const groupCounts = arg(args, '--groups', '1,100').split(',').map(Number);
  const bytes = Number(arg(args, '--bytes', '100'));
  await mkdir('.tmp', { recursive: true });
  const dir = await mkdtemp(join('.tmp', 'bench-raft-log-'));
  try {
    const raw = round(await rawSyncRate(dir, seconds), 0);
    const cases = [];
    for (const g of groupCounts) cases.push(await runCase(dir, g, seconds, bytes));
    if (json) {
      process.stdout.write(`${JSON.stringify({ rawFdatasyncsPerS: raw, entryBytes: bytes, seconds, cases })}\n`);
      return;
    }
    process.stdout.write(`raw write(100 B)+fdatasync: ${raw}/s (the disk's sync ceiling)\n`);
    process.stdout.write(
      `${table([
        ['groups', 'persists/s', 'fdatasyncs/s', 'entries/fsync', 'p50 ms', 'p99 ms', 'persists/s ÷ raw'],
        ...cases.map((c) => [
          String(c.groups),
          String(c.persistsPerS),
          String(c.fsyncsPerS),
          String(c.entriesPerFsync),
          String(c.p50Ms),
          String(c.p99Ms),
          String(round(c.persistsPerS / raw, 2)),
        ]),
      ])}\n`,
    );
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
