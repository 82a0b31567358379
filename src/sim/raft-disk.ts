/**
 * Slow and hung disks for the Raft simulation (issue 13, item 5). `SlowDisk` wraps a `Disk` (a `SimDisk.view()`)
 * and makes each fdatasync, and each directory sync, take virtual time drawn from the seeded random; `stall()`
 * makes them hang until `unstall()` — the hung disk a leader must step down over (Core's persistStallTicks).
 * Appends land at once (they go to the page cache); only durability waits.
 *
 * Syncs are served one at a time in the order they were issued, as by one device queue. The timers run on the node's clock: a sync pending when its process is killed never returns, and
 * SimDisk.crash() decides what of its data survived.
 */
import type { Disk } from '../raft/wal/disk.js';
import type { Clock } from '../store/contract.js';
import type { Random } from './random.js';

export interface SlowDiskOptions {
  /** The node's clock (NodeClock): the syncs wait on it. */
  readonly clock: Pick<Clock, 'now' | 'setTimeout'>;
  readonly random: Random;
  /** Each sync takes a time drawn uniformly from this range (default 0.1–2 ms: an SSD with a write cache). */
  readonly syncMs?: { readonly min: number; readonly max: number };
}

export interface SlowDiskStats {
  syncs: number;
  /** Syncs that had to wait for a stall to end. */
  stalledSyncs: number;
  /** The longest a sync took (virtual ms), stalls included. */
  maxSyncMs: number;
}

function checkRange(r: { readonly min: number; readonly max: number }): { min: number; max: number } {
  if (!(r.min >= 0 && r.max >= r.min)) throw new RangeError(`syncMs must be 0 ≤ min ≤ max, got ${JSON.stringify(r)}`);
  return { min: r.min, max: r.max };
}

export class SlowDisk implements Disk {
  readonly stats: SlowDiskStats = { syncs: 0, stalledSyncs: 0, maxSyncMs: 0 };
  readonly #inner: Disk;
  readonly #clock: Pick<Clock, 'now' | 'setTimeout'>;
  readonly #random: Random;
  #syncMs: { min: number; max: number };
  #stalled = false;
  /** Syncs waiting for the stall to end, in issue order. */
  #waiting: (() => void)[] = [];
  /** The last sync issued: the next one starts after it. */
  #tail: Promise<void> = Promise.resolve();

  constructor(inner: Disk, o: SlowDiskOptions) {
    this.#inner = inner;
    this.#clock = o.clock;
    this.#random = o.random;
    this.#syncMs = checkRange(o.syncMs ?? { min: 0.1, max: 2 });
  }

  /** Change how long syncs take from now on (a disk that slows down under load). */
  setSyncMs(range: { readonly min: number; readonly max: number }): void {
    this.#syncMs = checkRange(range);
  }

  get stalled(): boolean {
    return this.#stalled;
  }

  /** Syncs waiting for unstall(). */
  get waiting(): number {
    return this.#waiting.length;
  }

  /** The disk hangs: every sync from now on (and those in flight once they are due) waits for unstall(). */
  stall(): void {
    this.#stalled = true;
  }

  /** The disk answers again: the sync that was due returns now, and the queue behind it goes on. */
  unstall(): void {
    this.#stalled = false;
    const waiting = this.#waiting;
    this.#waiting = [];
    for (const go of waiting) go();
  }

  /** Hang for `ms` of the node's time. */
  stallFor(ms: number): void {
    this.stall();
    this.#clock.setTimeout(() => this.unstall(), ms);
  }

  list(): Promise<string[]> {
    return this.#inner.list();
  }

  read(name: string): Promise<Uint8Array> {
    return this.#inner.read(name);
  }

  append(name: string, data: Uint8Array): Promise<void> {
    return this.#inner.append(name, data);
  }

  async sync(name: string): Promise<void> {
    await this.#wait();
    return this.#inner.sync(name);
  }

  truncate(name: string, size: number): Promise<void> {
    return this.#inner.truncate(name, size);
  }

  rename(from: string, to: string): Promise<void> {
    return this.#inner.rename(from, to);
  }

  unlink(name: string): Promise<void> {
    return this.#inner.unlink(name);
  }

  async syncDir(): Promise<void> {
    await this.#wait();
    return this.#inner.syncDir();
  }

  close(): Promise<void> {
    return this.#inner.close();
  }

  /**
   * The time one sync takes: after every earlier sync (one device queue: they are served one at a time), its own
   * draw; if the disk is hung when it is due, until unstall().
   */
  #wait(): Promise<void> {
    this.stats.syncs++;
    const issuedMs = this.#clock.now();
    const mine = this.#tail.then(
      () =>
        new Promise<void>((resolve) => {
          const done = (): void => {
            this.stats.maxSyncMs = Math.max(this.stats.maxSyncMs, this.#clock.now() - issuedMs);
            resolve();
          };
          this.#clock.setTimeout(
            () => {
              if (!this.#stalled) return done();
              this.stats.stalledSyncs++;
              this.#waiting.push(done);
            },
            this.#random.range(this.#syncMs.min, this.#syncMs.max),
          );
        }),
    );
    this.#tail = mine;
    return mine;
  }
}
