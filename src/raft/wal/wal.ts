/**
 * One write-ahead log per node, shared by every Raft group on it (docs/raft.md, "Durable log"; the format in
 * docs/adr/0019-raft-log-format.md).
 *
 * - **Group commit.** `persist()` calls made while the previous batch is on its way to disk are gathered into the
 *   next batch: one write and one fdatasync cover every record of every group in it. Each call's promise resolves
 *   after the sync of its batch (and the group's in-memory Storage is updated then, so the core reads only durable
 *   entries from it): only then may the host send the Ready's `messagesAfterPersist` and call `advance()`.
 * - **Segments** of about `segmentBytes`, rolled over; a new segment starts with every group's hard state, and its
 *   directory entry is synced before anything written in it is acknowledged.
 * - **Recovery** (`Wal.open`) verifies every record's CRC, cuts a torn or corrupt tail of the last segment, refuses
 *   (CorruptLogError) a bad record in an older one, and rebuilds each group's snapshot, entries and hard state.
 * - **Snapshots** are files written atomically (temp, fsync, rename, fsync the directory); a segment is deleted once
 *   every record in it is covered by its group's snapshot (oldest segments first).
 *
 * Every group's entries since its snapshot are kept in memory (the core's Storage is synchronous): the host bounds
 * memory by compacting (`GroupStorage.compact`).
 */
import { CorruptLogError, DiskFailedError, InvalidArgumentError, describe, invariant } from '../../errors.js';
import { OptionReader } from '../../options.js';
import type { Storage } from '../log.js';
import { MemoryStorage } from '../memory-storage.js';
import type { Entry, HardState, Membership, Snapshot } from '../messages.js';
import { NO_RAFT_MUTANTS, checkRaftMutants, type RaftMutants } from '../mutants.js';
import type { Disk } from './disk.js';
import { encodeRecords, RecordType, scanSegment, type Record, type Scan } from './format.js';
import { decodeSnapshotFile, encodeSnapshotFile, type SnapshotKind } from './snapshot-file.js';

export interface WalOptions {
  /** A segment is rolled over once it holds this many bytes (default 64 MiB; a larger batch still fits in one). */
  readonly segmentBytes?: number;
  /** How many snapshot files to keep per group (default 2: the newest, and the one before in case). */
  readonly keepSnapshots?: number;
  /**
   * Deliberately broken variants, for the simulator and its tests only (src/raft/mutants.ts; default none). The log
   * acts on 'raft-ack-before-fsync' and 'raft-vote-not-persisted'; the others are the core's.
   */
  readonly mutants?: RaftMutants;
}

/** What one Ready asks to make durable, for one group. */
export interface Persist {
  readonly hardState?: HardState | undefined;
  readonly entries?: readonly Entry[];
  readonly snapshot?: Snapshot | undefined;
}

export interface WalStats {
  /** Batches written (each: one write and one fdatasync). */
  batches: number;
  /** persist() calls made durable. */
  persists: number;
  records: number;
  bytes: number;
  segmentsCreated: number;
  segmentsDeleted: number;
}

interface Segment {
  readonly seq: number;
  readonly name: string;
  bytes: number;
  /** Per group, the highest entry index, and the highest snapshot-install index, recorded in this segment. */
  readonly maxEntry: Map<string, number>;
  readonly maxInstall: Map<string, number>;
}

interface GroupState {
  readonly id: string;
  /** The durable state as the core sees it. */
  mem: MemoryStorage;
  opened: GroupStorage | undefined;
  kind: SnapshotKind;
  /** Snapshot files on disk, oldest first. */
  files: { name: string; index: number }[];
  busy: boolean;
}

interface Batch {
  records: Record[];
  apply: (() => void)[];
  waiters: { resolve: () => void; reject: (e: unknown) => void }[];
}

const SEGMENT = /^(\d{16})\.wal$/;
const SNAPSHOT = /^snap-([0-9a-f]*)-(\d{20})\.snap$/;
const hex = (s: string): string => Buffer.from(s, 'utf8').toString('hex');
const unhex = (s: string): string => Buffer.from(s, 'hex').toString('utf8');
const segmentName = (seq: number): string => `${String(seq).padStart(16, '0')}.wal`;
const snapshotName = (group: string, index: number): string =>
  `snap-${hex(group)}-${String(index).padStart(20, '0')}.snap`;

function readOptions(options: WalOptions): Required<WalOptions> {
  const r = new OptionReader(options, 'raft log options');
  const segmentBytes = r.integer('segmentBytes', 64 << 20, { min: 4096, max: 2 ** 31 });
  const keepSnapshots = r.integer('keepSnapshots', 2, { min: 1, max: 100 });
  const mutants = r.optional<RaftMutants>('mutants', checkRaftMutants) ?? NO_RAFT_MUTANTS;
  r.done();
  return { segmentBytes, keepSnapshots, mutants };
}

function emptyBatch(): Batch {
  return { records: [], apply: [], waiters: [] };
}

export class Wal {
  readonly #disk: Disk;
  readonly #opts: Required<WalOptions>;
  readonly #groups = new Map<string, GroupState>();
  readonly #segments: Segment[] = [];
  #pending: Batch = emptyBatch();
  #scheduled = false;
  #flushing = false;
  #deleting = false;
  #failed: DiskFailedError | undefined;
  /**
   * The newest segment whose first records (every group's hard state) are durable, directory entry included:
   * only segments older than it may be deleted.
   */
  #durableSeq = 0;
  #closed = false;
  /** Groups whose drop is on its way (group() refuses them meanwhile). */
  readonly #dropping = new Set<string>();
  readonly stats: WalStats = { batches: 0, persists: 0, records: 0, bytes: 0, segmentsCreated: 0, segmentsDeleted: 0 };
  /** What recovery cut from the tail of the last segment (a torn or corrupt write), if anything. */
  readonly recovery: { cutBytes: number; problem: string | undefined } = { cutBytes: 0, problem: undefined };

  private constructor(disk: Disk, opts: Required<WalOptions>) {
    this.#disk = disk;
    this.#opts = opts;
  }

  /** Recover the log on `disk` (empty for a new node). Throws CorruptLogError when it cannot be trusted. */
  static async open(disk: Disk, options: WalOptions = {}): Promise<Wal> {
    const wal = new Wal(disk, readOptions(options));
    await wal.#recover();
    return wal;
  }

  /** The groups the log holds something for. */
  groups(): string[] {
    return [...this.#groups.keys()];
  }

  /**
   * The durable Storage of group `id`, to hand to its core. `bootstrap` is the membership a new group starts with
   * (as for MemoryStorage); a group recovered with a snapshot takes its membership from it.
   */
  group(id: string, bootstrap: Membership = { voters: [], learners: [] }): GroupStorage {
    if (typeof id !== 'string' || id === '' || Buffer.byteLength(id) > 1024) {
      throw new InvalidArgumentError('a raft group id must be a non-empty string of at most 1024 bytes');
    }
    if (this.#dropping.has(id)) {
      throw new InvalidArgumentError(`raft group ${id} is being dropped: wait for the drop to finish, then open it`);
    }
    let g = this.#groups.get(id);
    if (g === undefined) {
      g = { id, mem: new MemoryStorage(bootstrap), opened: undefined, kind: 'compact', files: [], busy: false };
      this.#groups.set(id, g);
    } else if (g.opened === undefined && g.mem.snapshot().meta.index === 0) {
      g.mem = copyInto(new MemoryStorage(bootstrap), g.mem);
    }
    g.opened ??= new GroupStorage(this, g);
    return g.opened;
  }

  #check(): void {
    if (this.#closed) throw new DiskFailedError('the raft log is closed: open it again (Wal.open) to go on');
    if (this.#failed !== undefined) throw this.#failed;
  }

  /** Make one Ready's snapshot, entries and hard state durable for group `g` (see the class comment). */
  async persist(g: GroupState, p: Persist): Promise<void> {
    this.#check();
    invariant(!g.busy, () => `group ${g.id}: persist() called again before the previous one finished`);
    g.busy = true;
    try {
      const snap = p.snapshot;
      if (snap !== undefined && snap.meta.index > g.mem.snapshot().meta.index) {
        await this.#writeSnapshot(g, 'install', snap);
      }
      const records: Record[] = [];
      const installs = snap !== undefined && snap.meta.index > g.mem.snapshot().meta.index;
      if (installs)
        records.push({ type: RecordType.Install, group: g.id, index: snap.meta.index, term: snap.meta.term });
      const entries = p.entries ?? [];
      if (entries.length > 0) records.push({ type: RecordType.Entries, group: g.id, entries });
      if (p.hardState !== undefined) {
        // Mutant: the vote never reaches the disk (the in-memory Storage still shows it until a restart).
        const hardState = this.#opts.mutants.has('raft-vote-not-persisted')
          ? { ...p.hardState, vote: '' }
          : p.hardState;
        records.push({ type: RecordType.HardState, group: g.id, hardState });
      }
      if (records.length === 0) return;
      const hs = p.hardState;
      await this.#enqueue(records, () => {
        if (installs) {
          g.mem.applySnapshot(snap);
          g.kind = 'install';
        }
        g.mem.append(entries);
        if (hs !== undefined) g.mem.setHardState(hs);
      });
      this.stats.persists++;
      if (installs) void this.#collect();
    } finally {
      g.busy = false;
    }
  }

  /** Take a snapshot of group `g` at `index` (applied by the host) and drop what it covers (MemoryStorage.createSnapshot). */
  async compact(g: GroupState, index: number, membership: Membership, data: Uint8Array): Promise<Snapshot> {
    this.#check();
    const current = g.mem.snapshot().meta.index;
    if (index <= current) throw new InvalidArgumentError(`a snapshot at ${index} is not newer than ${current}`);
    const term = g.mem.term(index);
    if (term === undefined) throw new InvalidArgumentError(`group ${g.id} holds no entry ${index} to snapshot at`);
    const snapshot: Snapshot = { meta: { index, term, membership }, data };
    await this.#writeSnapshot(g, 'compact', snapshot);
    if (index > g.mem.snapshot().meta.index) {
      g.mem.createSnapshot(index, membership, data);
      g.kind = 'compact';
    }
    await this.#collect();
    return g.mem.snapshot();
  }

  /**
   * Delete group `id` durably: a drop record (once it is durable, recovery never brings the group back, even from
   * older records or leftover files), then its snapshot files. The caller has stopped using the group's storage
   * (no persist or compaction on its way). Resolves once the files are gone, durably; `group(id)` then starts a new,
   * empty group. A group the log holds nothing for is a no-op.
   */
  async drop(id: string): Promise<void> {
    this.#check();
    const g = this.#groups.get(id);
    if (g === undefined || this.#dropping.has(id)) return;
    invariant(!g.busy, () => `group ${id}: drop() called while a persist is on its way`);
    this.#dropping.add(id);
    // No segment is deleted meanwhile: until the files' deletion is durable, the drop record must stay, or a crash
    // could bring an undeleted snapshot file back as the group.
    while (this.#deleting) await new Promise((r) => setImmediate(r));
    this.#deleting = true;
    try {
      await this.#enqueue([{ type: RecordType.Drop, group: id }], () => {
        // Durable: the group's older records are disowned; segments no longer wait for its snapshot to cover them.
        this.#groups.delete(id);
        for (const s of this.#segments) {
          s.maxEntry.delete(id);
          s.maxInstall.delete(id);
        }
      });
      try {
        for (const f of g.files) await this.#disk.unlink(f.name);
        await this.#disk.syncDir();
      } catch (e) {
        this.#failed ??= new DiskFailedError(
          `deleting the snapshot files of dropped raft group ${id} failed (${describe(e)}). Free space or replace ` +
            'the disk, then restart the node: recovery finishes the deletion',
          { cause: e },
        );
        throw this.#failed;
      }
      g.files = [];
    } finally {
      this.#deleting = false;
      this.#dropping.delete(id);
    }
  }

  #enqueue(records: Record[], apply: () => void): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.#pending.records.push(...records);
      this.#pending.apply.push(apply);
      this.#pending.waiters.push({ resolve, reject });
      this.#schedule();
    });
  }

  #schedule(): void {
    if (this.#scheduled || this.#flushing) return;
    this.#scheduled = true;
    setImmediate(() => {
      this.#scheduled = false;
      void this.#flush();
    });
  }

  async #flush(): Promise<void> {
    if (this.#flushing || this.#pending.waiters.length === 0) return;
    this.#flushing = true;
    const batch = this.#pending;
    this.#pending = emptyBatch();
    try {
      if (this.#failed !== undefined) throw this.#failed;
      let active = this.#segments.at(-1);
      let records = batch.records;
      let rolled = false;
      if (active === undefined || (active.bytes > 0 && active.bytes >= this.#opts.segmentBytes)) {
        active = await this.#roll();
        records = [...this.#checkpoint(), ...records];
        rolled = true;
      }
      const bytes = encodeRecords(records);
      note(active, records);
      await this.#disk.append(active.name, bytes);
      active.bytes += bytes.byteLength;
      // Mutant: acknowledged while the batch is only in the page cache (a power loss now loses acked writes).
      const early = this.#opts.mutants.has('raft-ack-before-fsync');
      if (early) acknowledge(batch);
      await this.#disk.sync(active.name);
      if (rolled) {
        await this.#disk.syncDir();
        this.#durableSeq = active.seq;
      }
      this.stats.batches++;
      this.stats.records += records.length;
      this.stats.bytes += bytes.byteLength;
      if (!early) acknowledge(batch);
    } catch (e) {
      this.#failed ??=
        e instanceof DiskFailedError
          ? e
          : new DiskFailedError(
              `a write or fsync of the raft log failed (${describe(e)}); nothing since the last sync is acknowledged. ` +
                'Free space or replace the disk, then restart the node: it recovers what was synced',
              { cause: e },
            );
      for (const w of batch.waiters) w.reject(this.#failed);
      for (const w of this.#pending.waiters) w.reject(this.#failed);
      this.#pending = emptyBatch();
    } finally {
      this.#flushing = false;
      if (this.#pending.waiters.length > 0) this.#schedule();
    }
  }

  /** Every group's durable hard state: the first records of a new segment, so older segments never hold the last one. */
  #checkpoint(): Record[] {
    const out: Record[] = [];
    for (const g of this.#groups.values()) {
      const durable = g.mem.hardState();
      // Mutant: as in persist(), the vote stays off the disk.
      const hs = this.#opts.mutants.has('raft-vote-not-persisted') ? { ...durable, vote: '' } : durable;
      if (hs.term > 0 || hs.commit > 0 || hs.vote !== '')
        out.push({ type: RecordType.HardState, group: g.id, hardState: hs });
    }
    return out;
  }

  async #roll(): Promise<Segment> {
    const seq = (this.#segments.at(-1)?.seq ?? 0) + 1;
    const s: Segment = { seq, name: segmentName(seq), bytes: 0, maxEntry: new Map(), maxInstall: new Map() };
    this.#segments.push(s);
    this.stats.segmentsCreated++;
    return s;
  }

  async #writeSnapshot(g: GroupState, kind: SnapshotKind, snapshot: Snapshot): Promise<void> {
    const name = snapshotName(g.id, snapshot.meta.index);
    const tmp = `${name}.tmp`;
    try {
      if ((await this.#disk.list()).includes(tmp)) await this.#disk.unlink(tmp);
      await this.#disk.append(tmp, encodeSnapshotFile({ group: g.id, kind, snapshot }));
      await this.#disk.sync(tmp);
      await this.#disk.rename(tmp, name);
      await this.#disk.syncDir();
    } catch (e) {
      this.#failed ??= new DiskFailedError(
        `writing the snapshot of raft group ${g.id} at ${snapshot.meta.index} failed (${describe(e)}). ` +
          'Free space or replace the disk, then restart the node',
        { cause: e },
      );
      throw this.#failed;
    }
    g.files = g.files.filter((f) => f.name !== name);
    g.files.push({ name, index: snapshot.meta.index });
    g.files.sort((a, b) => a.index - b.index);
  }

  /** Delete the snapshot files beyond the newest `keepSnapshots`, and the oldest segments every group's snapshot covers. */
  async #collect(): Promise<void> {
    if (this.#deleting) return;
    this.#deleting = true;
    try {
      for (const g of this.#groups.values()) {
        while (g.files.length > this.#opts.keepSnapshots) {
          const f = g.files.shift()!;
          await this.#disk.unlink(f.name);
        }
      }
      while (
        this.#segments[0] !== undefined &&
        this.#segments[0].seq < this.#durableSeq &&
        this.#covered(this.#segments[0])
      ) {
        const s = this.#segments.shift()!;
        await this.#disk.unlink(s.name);
        this.stats.segmentsDeleted++;
      }
    } finally {
      this.#deleting = false;
    }
  }

  #covered(s: Segment): boolean {
    for (const [group, max] of s.maxEntry) {
      if (max > this.#snapshotIndex(group)) return false;
    }
    for (const [group, max] of s.maxInstall) {
      // The install record of the group's current snapshot stays: it is what cuts the entries before it.
      if (max >= this.#snapshotIndex(group)) return false;
    }
    return true;
  }

  #snapshotIndex(group: string): number {
    return this.#groups.get(group)?.mem.snapshot().meta.index ?? 0;
  }

  /** Whether a batch is on its way to disk or waiting for the one that is (the node watches for a stalled disk). */
  get writing(): boolean {
    return this.#flushing || this.#scheduled || this.#pending.waiters.length > 0;
  }

  /** The segments on disk, oldest first (for tests and tools). */
  segmentNames(): string[] {
    return this.#segments.map((s) => s.name);
  }

  /** Wait for what is queued, then release the disk. Later calls fail. */
  async close(): Promise<void> {
    while (this.#flushing || this.#scheduled || this.#pending.waiters.length > 0) {
      await new Promise((r) => setImmediate(r));
      if (!this.#flushing && !this.#scheduled && this.#pending.waiters.length > 0) void this.#flush();
    }
    this.#closed = true;
    await this.#disk.close();
  }

  async #recover(): Promise<void> {
    const names = await this.#disk.list();
    // Snapshots: the newest readable file per group.
    const byGroup = new Map<string, { name: string; index: number }[]>();
    for (const name of names) {
      if (name.endsWith('.tmp')) {
        await this.#disk.unlink(name); // a snapshot whose rename never happened
        continue;
      }
      const m = SNAPSHOT.exec(name);
      if (m === null) continue;
      const group = unhex(m[1]!);
      const list = byGroup.get(group) ?? [];
      list.push({ name, index: Number(m[2]) });
      byGroup.set(group, list);
    }
    const recovered = new Map<
      string,
      {
        snap: Snapshot | undefined;
        kind: SnapshotKind;
        entries: Entry[];
        hs: HardState | undefined;
        installSeen: boolean;
      }
    >();
    const state = (group: string): NonNullable<ReturnType<typeof recovered.get>> => {
      let r = recovered.get(group);
      if (r === undefined) {
        r = { snap: undefined, kind: 'compact', entries: [], hs: undefined, installSeen: false };
        recovered.set(group, r);
      }
      return r;
    };
    for (const [group, files] of byGroup) {
      files.sort((a, b) => a.index - b.index);
      for (let i = files.length - 1; i >= 0; i--) {
        const f = decodeSnapshotFile(await this.#disk.read(files[i]!.name));
        if (typeof f === 'string' || f.group !== group || f.snapshot.meta.index !== files[i]!.index) continue;
        const r = state(group);
        r.snap = f.snapshot;
        r.kind = f.kind;
        break;
      }
    }
    // Segments, oldest first: read (cutting a torn tail of the last one), then replay every record over the
    // snapshots, except what a group's last drop record disowns.
    const segs = names
      .map((name) => ({ name, m: SEGMENT.exec(name) }))
      .filter((s) => s.m !== null)
      .map((s) => ({ name: s.name, seq: Number(s.m![1]) }))
      .sort((a, b) => a.seq - b.seq);
    const scans: { name: string; seq: number; scan: Scan }[] = [];
    for (let i = 0; i < segs.length; i++) {
      const { name, seq } = segs[i]!;
      const bytes = await this.#disk.read(name);
      const scan = scanSegment(bytes);
      if (scan.problem !== undefined) {
        if (i < segs.length - 1) {
          throw new CorruptLogError(
            name,
            scan.goodBytes,
            `raft log segment ${name} is corrupt at byte ${scan.goodBytes} (${scan.problem}) and newer segments follow ` +
              'it, so this is not a torn last write: the node cannot trust its log. Restore its data directory from a ' +
              'backup, or delete the directory and add the node back to its groups as a new replica',
          );
        }
        await this.#disk.truncate(name, scan.goodBytes);
        await this.#disk.sync(name);
        this.recovery.cutBytes = bytes.byteLength - scan.goodBytes;
        this.recovery.problem = scan.problem;
      }
      scans.push({ name, seq, scan });
    }
    // Per group, where its last drop record is (segment, record), and whether anything of it follows.
    const lastDrop = new Map<string, { seg: number; rec: number; followed: boolean }>();
    scans.forEach(({ scan }, si) =>
      scan.records.forEach(({ record }, ri) => {
        if (record.type === RecordType.Drop) lastDrop.set(record.group, { seg: si, rec: ri, followed: false });
        else {
          const d = lastDrop.get(record.group);
          if (d !== undefined) d.followed = true;
        }
      }),
    );
    const disowned = (group: string, si: number, ri: number): boolean => {
      const d = lastDrop.get(group);
      return d !== undefined && (si < d.seg || (si === d.seg && ri <= d.rec));
    };
    // A group whose last record is its drop is gone: its snapshot files are what a crash left before they were
    // deleted. Deleted now, durably, before anything could collect the drop record.
    let unlinked = false;
    for (const [group, d] of lastDrop) {
      if (d.followed) continue;
      recovered.delete(group);
      for (const f of byGroup.get(group) ?? []) {
        await this.#disk.unlink(f.name);
        unlinked = true;
      }
      byGroup.delete(group);
    }
    if (unlinked) await this.#disk.syncDir();
    for (const [si, { name, seq, scan }] of scans.entries()) {
      const seg: Segment = { seq, name, bytes: scan.goodBytes, maxEntry: new Map(), maxInstall: new Map() };
      const live: Record[] = [];
      for (const [ri, { record, offset }] of scan.records.entries()) {
        if (disowned(record.group, si, ri)) continue;
        live.push(record);
        const r = state(record.group);
        const snapIndex = r.snap?.meta.index ?? 0;
        switch (record.type) {
          case RecordType.Entries: {
            const es = record.entries.filter((e) => e.index > snapIndex);
            if (es.length === 0) {
              // Below the snapshot, but it still replaced what followed it: entries an older record left above the
              // snapshot (a suffix this one truncated) are gone (found by the Raft simulation: docs/simulation.md).
              if (record.entries.length > 0) r.entries = [];
              break;
            }
            const first = es[0]!.index;
            const last = snapIndex + r.entries.length;
            if (first > last + 1) {
              throw new CorruptLogError(
                name,
                offset,
                `raft log segment ${name} at byte ${offset}: group ${record.group} has entries from ${first} but its log ` +
                  `ends at ${last} (a segment is missing). Restore the node's data directory from a backup, or delete ` +
                  'it and add the node back to its groups as a new replica',
              );
            }
            r.entries.length = first - snapIndex - 1;
            r.entries.push(...es);
            break;
          }
          case RecordType.HardState:
            r.hs = record.hardState;
            break;
          case RecordType.Install:
            if (record.index > snapIndex) {
              throw new CorruptLogError(
                name,
                offset,
                `raft group ${record.group} installed a snapshot at ${record.index} but no readable snapshot file holds ` +
                  `it (the newest is at ${snapIndex}). Restore the node's data directory from a backup, or delete it and ` +
                  'add the node back to its groups as a new replica',
              );
            }
            r.entries = [];
            if (record.index === snapIndex) r.installSeen = true;
            break;
          case RecordType.Drop:
            break; // never live: a drop disowns itself
        }
      }
      note(seg, live);
      this.#segments.push(seg);
    }
    this.#durableSeq = this.#segments.at(-1)?.seq ?? 0;
    const unrecorded: Record[] = [];
    for (const [id, r] of recovered) {
      // An installed snapshot whose record never reached the log (a crash after its rename): it still replaced
      // the log, and nothing can have been written after it. Its record is written now: the next recovery must not
      // empty the log again, of the entries written after this one (found by the Raft simulation, 5 nodes, seed 182).
      if (r.kind === 'install' && !r.installSeen && r.snap !== undefined) {
        r.entries = [];
        unrecorded.push({ type: RecordType.Install, group: id, index: r.snap.meta.index, term: r.snap.meta.term });
      }
      const mem = new MemoryStorage(r.snap?.meta.membership ?? { voters: [], learners: [] });
      if (r.snap !== undefined && r.snap.meta.index > 0) mem.applySnapshot(r.snap);
      mem.append(r.entries);
      const snapIndex = r.snap?.meta.index ?? 0;
      if (r.hs !== undefined) mem.setHardState({ ...r.hs, commit: Math.max(r.hs.commit, snapIndex) });
      else if (snapIndex > 0) mem.setHardState({ term: r.snap!.meta.term, vote: '', commit: snapIndex });
      const files = (byGroup.get(id) ?? []).filter((f) => f.index <= snapIndex);
      this.#groups.set(id, { id, mem, opened: undefined, kind: r.kind, files, busy: false });
    }
    if (unrecorded.length > 0) await this.#enqueue(unrecorded, () => undefined);
  }
}

/** A batch is durable: show it in each group's Storage (a bug there fails that persist alone, as an InvariantError). */
function acknowledge(batch: Batch): void {
  batch.apply.forEach((apply, i) => {
    try {
      apply();
      batch.waiters[i]!.resolve();
    } catch (e) {
      batch.waiters[i]!.reject(e);
    }
  });
}

/** Record in a segment's summary what `records` hold (for deleting it once snapshots cover it). */
function note(s: Segment, records: readonly Record[]): void {
  for (const r of records) {
    if (r.type === RecordType.Entries && r.entries.length > 0) {
      s.maxEntry.set(r.group, Math.max(s.maxEntry.get(r.group) ?? 0, r.entries.at(-1)!.index));
    } else if (r.type === RecordType.Install) {
      s.maxInstall.set(r.group, Math.max(s.maxInstall.get(r.group) ?? 0, r.index));
    }
  }
}

function copyInto(to: MemoryStorage, from: MemoryStorage): MemoryStorage {
  if (from.lastIndex() >= from.firstIndex()) to.append(from.entries(from.firstIndex(), from.lastIndex() + 1, Infinity));
  to.setHardState(from.hardState());
  return to;
}

/**
 * One group's durable Storage, for its core. The host persists each Ready through `persist()` (and sends
 * `messagesAfterPersist` only once it resolved), and compacts with `compact()`.
 */
export class GroupStorage implements Storage {
  readonly #wal: Wal;
  readonly #g: GroupState;

  constructor(wal: Wal, g: GroupState) {
    this.#wal = wal;
    this.#g = g;
  }

  get id(): string {
    return this.#g.id;
  }

  /** Make a Ready durable: its snapshot, entries and hard state. Resolves after the fdatasync that covers them. */
  persist(p: Persist): Promise<void> {
    return this.#wal.persist(this.#g, p);
  }

  /** Snapshot the state machine at `index` (the core's membershipAt(index)) and drop the entries it covers. */
  compact(index: number, membership: Membership, data: Uint8Array): Promise<Snapshot> {
    return this.#wal.compact(this.#g, index, membership, data);
  }

  initialState(): { hardState: HardState; membership: Membership } {
    return this.#g.mem.initialState();
  }
  hardState(): HardState {
    return this.#g.mem.hardState();
  }
  entries(lo: number, hi: number, maxBytes: number): Entry[] {
    return this.#g.mem.entries(lo, hi, maxBytes);
  }
  term(index: number): number | undefined {
    return this.#g.mem.term(index);
  }
  firstIndex(): number {
    return this.#g.mem.firstIndex();
  }
  lastIndex(): number {
    return this.#g.mem.lastIndex();
  }
  snapshot(): Snapshot {
    return this.#g.mem.snapshot();
  }
}
