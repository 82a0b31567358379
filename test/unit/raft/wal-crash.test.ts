/**
 * The write-ahead log on a disk that loses what was not synced and tears the last write: after any sequence of
 * appends, syncs, compactions and crashes, recovery keeps every record whose persist() resolved, and what it keeps
 * of the rest is a prefix of the order in which they were written (nothing after a torn record survives).
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { Entry } from '../../../src/raft/index.js';
import { SimDisk, Wal } from '../../../src/raft/wal/index.js';
import { seeded } from './network.js';

const enc = new TextEncoder();
const voters = { voters: ['a'], learners: [] };
const GROUPS = ['g0', 'g1', 'g2', 'g3'];

type Op =
  | { kind: 'persist'; group: number; count: number; size: number }
  | { kind: 'sync' }
  | { kind: 'compact'; group: number }
  | { kind: 'crash' };

const op: fc.Arbitrary<Op> = fc.oneof(
  {
    weight: 6,
    arbitrary: fc.record({
      kind: fc.constant('persist' as const),
      group: fc.nat(GROUPS.length - 1),
      count: fc.integer({ min: 1, max: 4 }),
      size: fc.integer({ min: 0, max: 300 }),
    }),
  },
  { weight: 3, arbitrary: fc.constant({ kind: 'sync' as const }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('compact' as const), group: fc.nat(GROUPS.length - 1) }) },
  { weight: 1, arbitrary: fc.constant({ kind: 'crash' as const }) },
);

const turn = (): Promise<void> => new Promise((r) => setImmediate(r));

interface Written {
  group: string;
  entries: Entry[];
  term: number;
  acked: boolean;
}

async function run(seed: number, ops: Op[]): Promise<void> {
  const disk = new SimDisk(seeded(seed));
  disk.holdSyncs = true;
  const options = { segmentBytes: 4096 };
  let wal = await Wal.open(disk.view(), options);
  let term = 0;
  /** Writes since the last recovery check, in the order they were handed to the log. */
  let written: Written[] = [];

  const check = async (): Promise<void> => {
    disk.holdSyncs = false;
    wal = await Wal.open(disk.view(), options);
    disk.holdSyncs = true;
    // Which writes survived: each must be all there or not at all, acknowledged ones there, and the survivors a
    // prefix of the write order.
    let seenMissing = false;
    for (const w of written) {
      const s = wal.group(w.group, voters);
      const first = s.firstIndex();
      const present = w.entries.every(
        (e) =>
          e.index < first ||
          (e.index <= s.lastIndex() &&
            s.term(e.index) === e.term &&
            Buffer.from(s.entries(e.index, e.index + 1, Infinity)[0]!.data).equals(Buffer.from(e.data))),
      );
      if (w.acked) expect(present, `acknowledged write to ${w.group} lost`).toBe(true);
      if (present && seenMissing) {
        // Present after a lost one is fine only when it is covered by the group's snapshot (nothing to compare).
        expect(w.entries.every((e) => e.index < first)).toBe(true);
      }
      if (!present) seenMissing = true;
    }
    written = [];
  };

  for (const o of ops) {
    switch (o.kind) {
      case 'persist': {
        const group = GROUPS[o.group]!;
        const s = wal.group(group, voters);
        if (written.some((w) => w.group === group && !w.acked)) break; // one Ready at a time per group
        const from = s.lastIndex() + 1;
        term++;
        const entries = Array.from({ length: o.count }, (_, i) => ({
          index: from + i,
          term,
          type: 'normal' as const,
          data: enc.encode(`${group}:${from + i}:${term}:${'x'.repeat(o.size)}`),
        }));
        const w: Written = { group, entries, term, acked: false };
        written.push(w);
        s.persist({ entries, hardState: { term, vote: '', commit: 0 } }).then(
          () => (w.acked = true),
          () => undefined,
        );
        break;
      }
      case 'sync':
        disk.release();
        await turn();
        await turn();
        break;
      case 'compact': {
        const s = wal.group(GROUPS[o.group]!, voters);
        const last = s.lastIndex();
        if (last > s.snapshot().meta.index + 1 && !written.some((w) => w.group === GROUPS[o.group] && !w.acked)) {
          disk.holdSyncs = false;
          await s.compact(last - 1, voters, enc.encode(`snap@${last - 1}`));
          disk.holdSyncs = true;
        }
        break;
      }
      case 'crash':
        disk.crash();
        await check();
        break;
    }
  }
  disk.crash();
  await check();
}

describe('raft write-ahead log: crashes', () => {
  it('keeps every acknowledged write and only a prefix of the rest (fast-check)', async () => {
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 1, max: 1_000_000 }), fc.array(op, { minLength: 1, maxLength: 80 }), run),
      { numRuns: 300 },
    );
  });
});
