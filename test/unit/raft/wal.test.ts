import { describe, expect, it } from 'vitest';
import { CorruptLogError, DiskFailedError } from '../../../src/errors.js';
import type { Entry, HardState } from '../../../src/raft/index.js';
import { crc32Table, zlib32 } from '../../../src/raft/wal/crc.js';
import { SimDisk, Wal, type Disk } from '../../../src/raft/wal/index.js';
import { seeded } from './network.js';

const enc = new TextEncoder();
const voters = { voters: ['a', 'b', 'c'], learners: [] };

function entries(from: number, n: number, term: number, tag = 'x'): Entry[] {
  return Array.from({ length: n }, (_, i) => ({
    index: from + i,
    term,
    type: 'normal' as const,
    data: enc.encode(`${tag}-${from + i}-${term}`),
  }));
}

function all(wal: Wal, group: string): Entry[] {
  const s = wal.group(group, voters);
  return s.lastIndex() < s.firstIndex() ? [] : s.entries(s.firstIndex(), s.lastIndex() + 1, Infinity);
}

const hs = (term: number, vote: string, commit: number): HardState => ({ term, vote, commit });

describe('raft write-ahead log', () => {
  it('the CRC is zlib’s CRC-32, native or from the table', () => {
    const data = enc.encode('123456789');
    expect(zlib32(data)).toBe(0xcbf43926);
    expect(crc32Table(data)).toBe(0xcbf43926);
  });

  it('round trip: entries, a replaced suffix and the hard state come back after reopening', async () => {
    const disk = new SimDisk(seeded(1));
    const wal = await Wal.open(disk);
    const g = wal.group('g1', voters);
    await g.persist({ entries: entries(1, 5, 1), hardState: hs(1, 'a', 0) });
    await g.persist({ entries: entries(4, 3, 2, 'y'), hardState: hs(2, 'b', 3) });
    expect(g.lastIndex()).toBe(6);
    await wal.close();
    const again = await Wal.open(disk);
    expect(again.groups()).toEqual(['g1']);
    const r = again.group('g1', voters);
    expect(r.hardState()).toEqual(hs(2, 'b', 3));
    expect(all(again, 'g1')).toEqual([...entries(1, 3, 1), ...entries(4, 3, 2, 'y')]);
    expect(r.initialState().membership).toEqual(voters);
    expect(again.recovery.cutBytes).toBe(0);
  });

  it('many groups interleaved, over many segments, each recovers its own log', async () => {
    const disk = new SimDisk(seeded(2));
    const wal = await Wal.open(disk, { segmentBytes: 4096 });
    const rnd = seeded(3);
    const model = new Map<string, Entry[]>();
    for (let step = 0; step < 400; step++) {
      const id = `group-${Math.floor(rnd() * 20)}`;
      const log = model.get(id) ?? [];
      const from = log.length > 0 && rnd() < 0.2 ? Math.max(1, log.length - 2) : log.length + 1;
      const es = entries(from, 1 + Math.floor(rnd() * 4), step + 1, id);
      log.length = from - 1;
      log.push(...es);
      model.set(id, log);
      await wal.group(id, voters).persist({ entries: es, hardState: hs(step + 1, '', 0) });
    }
    expect(wal.segmentNames().length).toBeGreaterThan(3);
    await wal.close();
    const again = await Wal.open(disk, { segmentBytes: 4096 });
    for (const [id, log] of model) expect(all(again, id)).toEqual(log);
  });

  it('group commit: appends from 100 groups in one tick take one write and one fdatasync', async () => {
    const disk = new SimDisk(seeded(4));
    const wal = await Wal.open(disk);
    await wal.group('warm', voters).persist({ entries: entries(1, 1, 1) }); // the first segment exists
    const before = { ...disk.counts };
    await Promise.all(
      Array.from({ length: 100 }, (_, i) =>
        wal.group(`g${i}`, voters).persist({ entries: entries(1, 3, 1), hardState: hs(1, 'a', 0) }),
      ),
    );
    expect(disk.counts.sync - before.sync).toBe(1);
    expect(disk.counts.append - before.append).toBe(1);
    expect(wal.stats.batches).toBe(2);
  });

  it('a group’s persist resolves only after the fdatasync, and its Storage shows the entries only then', async () => {
    const disk = new SimDisk(seeded(5));
    disk.holdSyncs = true;
    const wal = await Wal.open(disk);
    const g = wal.group('g', voters);
    let done = false;
    const p = g.persist({ entries: entries(1, 2, 1) }).then(() => (done = true));
    while (disk.heldSyncs === 0) await new Promise((r) => setImmediate(r));
    expect(done).toBe(false);
    expect(g.lastIndex()).toBe(0);
    disk.release();
    await p;
    expect(g.lastIndex()).toBe(2);
  });

  it('a torn or corrupt byte in the tail of the last segment is cut at the last good record', async () => {
    const disk = new SimDisk(seeded(6));
    const wal = await Wal.open(disk);
    const g = wal.group('g', voters);
    await g.persist({ entries: entries(1, 2, 1) });
    await g.persist({ entries: entries(3, 2, 1) });
    const [seg] = wal.segmentNames();
    const size = disk.size(seg!);
    await wal.close();
    disk.corrupt(seg!, size - 3);
    const again = await Wal.open(disk);
    expect(all(again, 'g')).toEqual(entries(1, 2, 1));
    expect(again.recovery.problem).toBe('a checksum mismatch');
    expect(disk.size(seg!)).toBeLessThan(size);
    // The log goes on after the cut.
    await again.group('g', voters).persist({ entries: entries(3, 1, 2) });
    await again.close();
    expect(all(await Wal.open(disk), 'g')).toEqual([...entries(1, 2, 1), ...entries(3, 1, 2)]);
  });

  it('a corrupt byte in an older segment is a CorruptLogError naming the file, and nothing is recovered', async () => {
    const disk = new SimDisk(seeded(7));
    const wal = await Wal.open(disk, { segmentBytes: 4096 });
    for (let i = 1; i <= 60; i++) await wal.group('g', voters).persist({ entries: entries(i, 1, 1, 'z'.repeat(100)) });
    const segs = wal.segmentNames();
    expect(segs.length).toBeGreaterThan(1);
    await wal.close();
    disk.corrupt(segs[0]!, 200);
    const err = await Wal.open(disk, { segmentBytes: 4096 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CorruptLogError);
    expect((err as CorruptLogError).code).toBe('CORRUPT_DATA');
    expect((err as CorruptLogError).file).toBe(segs[0]);
    expect((err as Error).message).toMatch(/delete the directory and add the node back/);
  });

  it('snapshots are atomic: a crash between the write and the rename leaves the old snapshot', async () => {
    const disk = new SimDisk(seeded(8));
    const wal = await Wal.open(disk);
    const g = wal.group('g', voters);
    await g.persist({ entries: entries(1, 10, 1), hardState: hs(1, 'a', 10) });
    await g.compact(4, voters, enc.encode('state@4'));
    // The next snapshot: crash once its temporary file is written and synced, before the rename.
    const rename = disk.rename.bind(disk);
    disk.rename = async () => {
      disk.crash();
      throw new Error('power lost');
    };
    await expect(g.compact(8, voters, enc.encode('state@8'))).rejects.toBeInstanceOf(DiskFailedError);
    disk.rename = rename;
    const again = await Wal.open(disk);
    const r = again.group('g', voters);
    expect(r.snapshot().meta.index).toBe(4);
    expect(new TextDecoder().decode(r.snapshot().data)).toBe('state@4');
    expect(all(again, 'g')).toEqual(entries(5, 6, 1));
    expect((await disk.list()).some((n) => n.endsWith('.tmp'))).toBe(false);
  });

  it('an installed snapshot replaces the log, across a restart', async () => {
    const disk = new SimDisk(seeded(9));
    const wal = await Wal.open(disk);
    const g = wal.group('g', voters);
    await g.persist({ entries: entries(1, 8, 1), hardState: hs(1, '', 2) });
    const snapshot = { meta: { index: 5, term: 3, membership: voters }, data: enc.encode('s5') };
    await g.persist({ snapshot, hardState: hs(3, '', 5) });
    await g.persist({ entries: entries(6, 2, 3, 'new') });
    await wal.close();
    const r = (await Wal.open(disk)).group('g', voters);
    expect(r.snapshot().meta).toEqual(snapshot.meta);
    expect(r.entries(6, 8, Infinity)).toEqual(entries(6, 2, 3, 'new'));
    expect(r.lastIndex()).toBe(7);
  });

  it('an installed snapshot whose record a crash lost: the entries written after the restart survive the next one', async () => {
    // Found by the Raft simulation (5 nodes, seed 182): the recovery rule "an install without its record replaced
    // the log" emptied the log again at the next restart, entries written since included, under a commit index
    // that covered them.
    const disk = new SimDisk(seeded(11));
    const wal = await Wal.open(disk);
    const g = wal.group('g', voters);
    await g.persist({ entries: entries(1, 4, 1), hardState: hs(1, '', 2) });
    // The install: the snapshot file is durable, then the power fails before the batch with its record is synced.
    const snapshot = { meta: { index: 6, term: 2, membership: voters }, data: enc.encode('s6') };
    const append = disk.append.bind(disk);
    disk.append = async (name: string, data: Uint8Array) => {
      if (name.endsWith('.wal')) {
        disk.crash();
        throw new Error('power lost');
      }
      return append(name, data);
    };
    await expect(g.persist({ snapshot, hardState: hs(2, '', 6) })).rejects.toBeInstanceOf(DiskFailedError);
    disk.append = append;
    expect(await disk.list()).toContain('snap-67-00000000000000000006.snap');
    const second = await Wal.open(disk);
    const g2 = second.group('g', voters);
    expect(g2.snapshot().meta.index).toBe(6);
    expect(g2.lastIndex()).toBe(6);
    await g2.persist({ entries: entries(7, 3, 2, 'after'), hardState: hs(2, '', 9) });
    disk.crash();
    const third = (await Wal.open(disk)).group('g', voters);
    expect(third.snapshot().meta.index).toBe(6);
    expect(third.entries(7, 10, Infinity)).toEqual(entries(7, 3, 2, 'after'));
    expect(third.initialState().hardState.commit).toBe(9);
  });

  it('a suffix replaced below a later snapshot stays replaced after a restart', async () => {
    // Found by the Raft simulation (3 nodes, seed 42, with a change of the core's messages that was not kept): a
    // deposed leader held 1–6 of term 1, took 3–4 of term 2 from the next leader (replacing 3–6), then compacted
    // at 4. Recovery skipped the record of 3–4 (all below the snapshot) and kept 5–6 of term 1 from the older
    // record after the snapshot: a log with (5, term 1) after (4, term 2).
    const disk = new SimDisk(seeded(12));
    const wal = await Wal.open(disk);
    const g = wal.group('g', voters);
    await g.persist({ entries: entries(1, 6, 1), hardState: hs(1, 'a', 2) });
    await g.persist({ entries: entries(3, 2, 2, 'y'), hardState: hs(2, 'b', 4) });
    expect(g.lastIndex()).toBe(4);
    await g.compact(4, voters, enc.encode('s4'));
    await wal.close();
    const r = (await Wal.open(disk)).group('g', voters);
    expect(r.snapshot().meta).toMatchObject({ index: 4, term: 2 });
    expect(r.lastIndex()).toBe(4);
  });

  it('compaction deletes the segments every group’s snapshot covers, oldest first', async () => {
    const disk = new SimDisk(seeded(10));
    const wal = await Wal.open(disk, { segmentBytes: 4096 });
    const a = wal.group('a', voters);
    const b = wal.group('b', voters);
    for (let i = 1; i <= 100; i++) {
      await a.persist({ entries: entries(i, 1, 1, 'p'.repeat(100)), hardState: hs(1, 'a', i) });
      await b.persist({ entries: entries(i, 1, 1, 'q'.repeat(100)), hardState: hs(1, 'a', i) });
    }
    const before = wal.segmentNames();
    expect(before.length).toBeGreaterThan(5);
    await a.compact(90, voters, enc.encode('a90'));
    expect(wal.segmentNames()).toEqual(before); // b still needs them
    await b.compact(90, voters, enc.encode('b90'));
    const after = wal.segmentNames();
    expect(after.length).toBeLessThan(before.length);
    expect(after.length).toBeGreaterThan(0);
    for (const name of before) expect((await disk.list()).includes(name)).toBe(after.includes(name));
    await wal.close();
    const again = await Wal.open(disk, { segmentBytes: 4096 });
    for (const [id, s] of [
      ['a', 'p'],
      ['b', 'q'],
    ] as const) {
      const r = again.group(id, voters);
      expect(r.snapshot().meta.index).toBe(90);
      expect(r.hardState()).toEqual(hs(1, 'a', 100));
      expect(all(again, id)).toEqual(entries(91, 10, 1, s.repeat(100)));
    }
  });

  it('a failed fsync fails the batch and every later persist with DiskFailedError: nothing is acknowledged', async () => {
    const disk = new SimDisk(seeded(11));
    const wal = await Wal.open(disk);
    const g = wal.group('g', voters);
    await g.persist({ entries: entries(1, 1, 1) });
    disk.failNext = Object.assign(new Error('ENOSPC: no space left on device'), { code: 'ENOSPC' });
    const err = await g.persist({ entries: entries(2, 1, 1) }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DiskFailedError);
    expect((err as Error).message).toMatch(/ENOSPC.*Free space/);
    expect(g.lastIndex()).toBe(1);
    await expect(g.persist({ entries: entries(2, 1, 1) })).rejects.toBeInstanceOf(DiskFailedError);
  });

  it('old segments stay until a newer segment’s hard-state checkpoint is durable', async () => {
    const sim = new SimDisk(() => 0); // a crash keeps none of the unsynced writes
    let gate: Promise<void> | undefined = undefined;
    let open = (): void => undefined;
    const disk: Disk = {
      ...sim.view(),
      sync: async (name) => {
        if (name.endsWith('.wal') && gate !== undefined) await gate;
        return sim.sync(name);
      },
    };
    const wal = await Wal.open(disk, { segmentBytes: 4096 });
    const a = wal.group('a', voters);
    const c = wal.group('c', voters);
    await c.persist({ entries: entries(1, 1, 1), hardState: hs(1, 'c', 1) });
    // Every batch fills a segment: the next one starts a new segment with every group's hard state.
    for (let i = 1; i <= 3; i++) {
      const big = [{ index: i, term: 5, type: 'normal' as const, data: new Uint8Array(5000) }];
      await a.persist({ entries: big, hardState: hs(5, 'x', i) });
    }
    expect(wal.segmentNames()).toHaveLength(3);
    // A batch that starts a segment, its fdatasync slow.
    gate = new Promise((r) => (open = r));
    void wal
      .group('b', voters)
      .persist({ entries: entries(1, 1, 1) })
      .catch(() => undefined);
    while (wal.segmentNames().length < 4) await new Promise((r) => setImmediate(r));
    // Compactions meanwhile: every segment is covered, and each snapshot fsyncs the directory.
    await a.compact(3, voters, enc.encode('a3'));
    await c.compact(1, voters, enc.encode('c1'));
    await sim.syncDir(); // the file system commits its journal by itself, deletions included
    sim.crash();
    open();
    const again = await Wal.open(sim.view(), { segmentBytes: 4096 });
    expect(again.group('a', voters).hardState()).toEqual(hs(5, 'x', 3));
    expect(again.group('c', voters).hardState()).toEqual(hs(1, 'c', 1));
  });

  it('recovery takes the newest snapshot file that checks, and falls back to the one before', async () => {
    const disk = new SimDisk(seeded(12));
    const wal = await Wal.open(disk);
    const g = wal.group('g', voters);
    await g.persist({ entries: entries(1, 10, 1), hardState: hs(1, 'a', 10) });
    await g.compact(4, voters, enc.encode('s4'));
    await g.compact(8, voters, enc.encode('s8'));
    await wal.close();
    const newest = (await disk.list())
      .filter((n) => n.endsWith('.snap'))
      .sort()
      .at(-1)!;
    expect(newest).toMatch(/0{19}8\.snap$/);
    disk.corrupt(newest, 20);
    const r = (await Wal.open(disk)).group('g', voters);
    expect(r.snapshot().meta.index).toBe(4);
    expect(new TextDecoder().decode(r.snapshot().data)).toBe('s4');
    expect(r.entries(5, 11, Infinity)).toEqual(entries(5, 6, 1));
  });
});
