/**
 * Dropping a group from the write-ahead log (Wal.drop, the DROP record): gone across a restart with its snapshot
 * files, its segments collectable, a new group of the same name independent of the old one, and a crash at any
 * point of the drop leaves the group either whole or gone.
 */
import { describe, expect, it } from 'vitest';
import type { Entry, HardState } from '../../../src/raft/index.js';
import { SimDisk, Wal, type Disk } from '../../../src/raft/wal/index.js';
import { seeded } from './network.js';

const enc = new TextEncoder();
const voters = { voters: ['a', 'b', 'c'], learners: [] };

function entries(from: number, n: number, term: number, tag: string): Entry[] {
  return Array.from({ length: n }, (_, i) => ({
    index: from + i,
    term,
    type: 'normal' as const,
    data: enc.encode(`${tag}-${from + i}-${term}-${'p'.repeat(100)}`),
  }));
}

function all(wal: Wal, group: string): Entry[] {
  const s = wal.group(group, voters);
  return s.lastIndex() < s.firstIndex() ? [] : s.entries(s.firstIndex(), s.lastIndex() + 1, Infinity);
}

const hs = (term: number, vote: string, commit: number): HardState => ({ term, vote, commit });
const snapFiles = (names: string[], group: string): string[] =>
  names.filter((n) => n.startsWith(`snap-${Buffer.from(group).toString('hex')}-`));

/** Two groups with entries, a hard state and a snapshot each. */
async function twoGroups(wal: Wal): Promise<void> {
  for (const id of ['doomed', 'kept']) {
    const g = wal.group(id, voters);
    await g.persist({ entries: entries(1, 20, 1, id), hardState: hs(1, 'a', 20) });
    await g.compact(10, voters, enc.encode(`${id}-state@10`));
    await g.persist({ entries: entries(21, 5, 2, id), hardState: hs(2, 'b', 22) });
  }
}

describe('raft write-ahead log: dropping a group', () => {
  it('a dropped group is gone after a restart, snapshot files included; the other group is untouched', async () => {
    const disk = new SimDisk(seeded(1));
    const wal = await Wal.open(disk);
    await twoGroups(wal);
    const keptBefore = all(wal, 'kept');
    expect(snapFiles(await disk.list(), 'doomed')).toHaveLength(1);
    await wal.drop('doomed');
    expect(wal.groups()).toEqual(['kept']);
    expect(snapFiles(await disk.list(), 'doomed')).toEqual([]);
    await wal.close();
    const again = await Wal.open(disk);
    expect(again.groups()).toEqual(['kept']);
    expect(all(again, 'kept')).toEqual(keptBefore);
    expect(again.group('kept', voters).hardState()).toEqual(hs(2, 'b', 22));
    // Opened again, the name is a new, empty group with the membership it is given.
    const fresh = again.group('doomed', { voters: [], learners: [] });
    expect(fresh.lastIndex()).toBe(0);
    expect(fresh.hardState()).toEqual(hs(0, '', 0));
    expect(fresh.initialState().membership).toEqual({ voters: [], learners: [] });
  });

  it('a group made again under a dropped name recovers only its new records and snapshot', async () => {
    const disk = new SimDisk(seeded(2));
    const wal = await Wal.open(disk);
    await twoGroups(wal);
    await wal.drop('doomed');
    const g = wal.group('doomed', voters);
    await g.persist({ entries: entries(1, 12, 7, 'new'), hardState: hs(7, 'c', 12) });
    await g.compact(4, voters, enc.encode('new-state@4'));
    await wal.close();
    const again = await Wal.open(disk);
    expect(again.groups().sort()).toEqual(['doomed', 'kept']);
    const r = again.group('doomed', voters);
    expect(r.snapshot().meta.index).toBe(4);
    expect(new TextDecoder().decode(r.snapshot().data)).toBe('new-state@4');
    expect(all(again, 'doomed')).toEqual(entries(5, 8, 7, 'new'));
    expect(r.hardState()).toEqual(hs(7, 'c', 12));
  });

  it('the segments a dropped group held are collected once the other groups’ snapshots cover them', async () => {
    const disk = new SimDisk(seeded(3));
    const wal = await Wal.open(disk, { segmentBytes: 4096 });
    const a = wal.group('a', voters);
    const b = wal.group('b', voters);
    for (let i = 0; i < 10; i++) {
      await a.persist({ entries: entries(1 + i * 5, 5, 1, 'a'), hardState: hs(1, 'a', 5 * i) });
      await b.persist({ entries: entries(1 + i * 5, 5, 1, 'b'), hardState: hs(1, 'a', 5 * i) });
    }
    const segments = wal.segmentNames().length;
    expect(segments).toBeGreaterThan(3);
    await b.compact(50, voters, enc.encode('b@50'));
    // Group a's entries keep every old segment.
    expect(wal.segmentNames()).toHaveLength(segments);
    await wal.drop('a');
    await b.persist({ entries: entries(51, 40, 1, 'b') });
    await b.compact(90, voters, enc.encode('b@90'));
    expect(wal.segmentNames().length).toBeLessThan(segments);
    await wal.close();
    const again = await Wal.open(disk, { segmentBytes: 4096 });
    expect(again.groups()).toEqual(['b']);
    expect(again.group('b', voters).snapshot().meta.index).toBe(90);
  });

  it('a crash during a drop: the group is whole or gone, never half (200 seeds, both outcomes seen)', async () => {
    const outcomes = { whole: 0, gone: 0 };
    for (let seed = 1; seed <= 200; seed++) {
      const sim = new SimDisk(seeded(seed));
      const rnd = seeded(1000 + seed);
      // Where the crash lands: while the drop record waits for its fsync (the record torn or lost), or after it
      // is durable, at one of the snapshot files' deletions (the files left behind).
      const at = rnd() < 0.5 ? 'before-sync' : 'at-unlink';
      let crashed = false;
      const view = sim.view();
      const disk: Disk = {
        ...view,
        unlink: async (name) => {
          if (at === 'at-unlink' && !crashed && name.startsWith('snap-')) {
            crashed = true;
            sim.crash();
            throw new Error('power loss');
          }
          return view.unlink(name);
        },
      };
      const wal = await Wal.open(disk);
      await twoGroups(wal);
      const before = { entries: all(wal, 'doomed'), hs: wal.group('doomed', voters).hardState() };
      const snapIndex = wal.group('doomed', voters).snapshot().meta.index;
      const kept = all(wal, 'kept');
      if (at === 'before-sync') sim.holdSyncs = true;
      const dropping = wal.drop('doomed').catch(() => undefined);
      if (at === 'before-sync') {
        while (sim.heldSyncs === 0) await new Promise((r) => setImmediate(r));
        sim.crash();
        crashed = true;
        sim.holdSyncs = false;
      } else {
        await dropping;
      }
      expect(crashed).toBe(true);
      const again = await Wal.open(sim.view());
      expect(all(again, 'kept')).toEqual(kept);
      if (again.groups().includes('doomed')) {
        outcomes.whole++;
        const r = again.group('doomed', voters);
        expect(r.snapshot().meta.index).toBe(snapIndex);
        expect(all(again, 'doomed')).toEqual(before.entries);
        expect(r.hardState()).toEqual(before.hs);
      } else {
        outcomes.gone++;
        expect(snapFiles(await sim.list(), 'doomed')).toEqual([]);
        // And it stays gone across one more restart (the leftover files' deletion was made durable).
        sim.crash();
        const third = await Wal.open(sim.view());
        expect(third.groups()).toEqual(['kept']);
      }
    }
    expect(outcomes.whole).toBeGreaterThan(0);
    expect(outcomes.gone).toBeGreaterThan(0);
  });
});
