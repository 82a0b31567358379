/** The write-ahead log on the real file system (node:fs), in a temporary directory. */
import { mkdtemp, readdir, rm, stat, truncate } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { Entry } from '../../../src/raft/index.js';
import { FsDisk, Wal } from '../../../src/raft/wal/index.js';

const enc = new TextEncoder();
const voters = { voters: ['a', 'b', 'c'], learners: [] };
const dirs: string[] = [];

afterEach(async () => {
  for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
});

function entries(from: number, n: number, term: number): Entry[] {
  return Array.from({ length: n }, (_, i) => ({
    index: from + i,
    term,
    type: 'normal' as const,
    data: enc.encode(`v${from + i}`.repeat(20)),
  }));
}

describe('raft write-ahead log on the real file system', () => {
  it('persists, rolls segments, snapshots, compacts, and recovers; a torn tail is cut', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'raft-wal-'));
    dirs.push(dir);
    const wal = await Wal.open(await FsDisk.open(dir), { segmentBytes: 8192 });
    const groups = ['alpha', 'beta', 'gamma/δ'];
    for (let i = 1; i <= 60; i++) {
      await Promise.all(
        groups.map((g) =>
          wal.group(g, voters).persist({ entries: entries(i, 1, 1), hardState: { term: 1, vote: 'a', commit: i } }),
        ),
      );
    }
    for (const g of groups) await wal.group(g, voters).compact(50, voters, enc.encode(`${g}@50`));
    const segs = wal.segmentNames();
    await wal.close();
    const files = await readdir(dir);
    expect(files.filter((f) => f.endsWith('.snap'))).toHaveLength(3);
    expect(files.filter((f) => f.endsWith('.wal'))).toEqual(segs);

    // A torn last write: cut a few bytes off the last segment.
    const last = join(dir, segs.at(-1)!);
    await truncate(last, (await stat(last)).size - 5);
    const again = await Wal.open(await FsDisk.open(dir), { segmentBytes: 8192 });
    expect(again.recovery.cutBytes).toBeGreaterThan(0);
    for (const g of groups) {
      const s = again.group(g, voters);
      expect(new TextDecoder().decode(s.snapshot().data)).toBe(`${g}@50`);
      expect(s.firstIndex()).toBe(51);
      expect(s.lastIndex()).toBeGreaterThanOrEqual(59); // the torn record was the last group's entry 60
      expect(s.entries(51, 52, Infinity)).toEqual(entries(51, 1, 1));
    }
    await again.group('alpha', voters).persist({ entries: entries(61, 1, 2) });
    await again.close();
  });
});
