/**
 * The few file operations the write-ahead log needs, on one directory, so that the simulator can substitute a disk
 * that loses what was not synced. `FsDisk` (fs-disk.ts) is the real one; `SimDisk` below keeps files in memory and
 * models what a crash does to them.
 */
import { InvalidArgumentError } from '../../errors.js';

export interface Disk {
  /** The names of the files in the directory. */
  list(): Promise<string[]>;
  /** The whole content of a file. */
  read(name: string): Promise<Uint8Array>;
  /** Append bytes at the end of a file, creating it when missing. Not durable before sync(). */
  append(name: string, data: Uint8Array): Promise<void>;
  /** fdatasync: what was appended to the file is durable (its directory entry is not: see syncDir). */
  sync(name: string): Promise<void>;
  /** Cut a file to `size` bytes. */
  truncate(name: string, size: number): Promise<void>;
  /** Atomically replace `to` with `from` (durable after syncDir). */
  rename(from: string, to: string): Promise<void>;
  unlink(name: string): Promise<void>;
  /** fsync the directory: file creations, renames and removals so far are durable. */
  syncDir(): Promise<void>;
  /** Release open files. */
  close(): Promise<void>;
}

interface Inode {
  /** Bytes that survive a crash. */
  synced: Uint8Array;
  /** Writes since the last sync, in order: a crash keeps a prefix of them, the last one kept possibly torn. */
  unsynced: Uint8Array[];
}

function concat(parts: readonly Uint8Array[]): Uint8Array {
  let n = 0;
  for (const p of parts) n += p.byteLength;
  const out = new Uint8Array(n);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.byteLength;
  }
  return out;
}

/**
 * A disk in memory for tests and the simulator. Appends are volatile until sync(); creations, renames and
 * removals are volatile until syncDir(). crash() drops what was volatile: the directory reverts to its last
 * syncDir(), and of each file's unsynced writes a random prefix survives, the last of them torn at a random byte
 * (drawn from the injected source). Truncation is durable at once (recovery syncs after it anyway).
 */
export class SimDisk implements Disk {
  #dir = new Map<string, Inode>();
  #durableDir = new Map<string, Inode>();
  readonly #random: () => number;
  /** Operation counts, for tests (group commit: many appends, one sync). */
  readonly counts = { append: 0, sync: 0, syncDir: 0, rename: 0, unlink: 0, truncate: 0 };
  /** When set, the next append or sync fails with this error (a full or failing disk). */
  failNext: Error | undefined;
  /** When true, sync() waits for release() (a slow disk: a crash can then land between a write and its sync). */
  holdSyncs = false;
  #held: (() => void)[] = [];
  #generation = 0;

  constructor(random: () => number = Math.random) {
    this.#random = random;
  }

  #get(name: string): Inode {
    const f = this.#dir.get(name);
    if (f === undefined) throw new InvalidArgumentError(`no file ${name}`);
    return f;
  }

  #fault(): void {
    const e = this.failNext;
    if (e !== undefined) {
      this.failNext = undefined;
      throw e;
    }
  }

  async list(): Promise<string[]> {
    return [...this.#dir.keys()].sort();
  }

  async read(name: string): Promise<Uint8Array> {
    const f = this.#get(name);
    return concat([f.synced, ...f.unsynced]);
  }

  async append(name: string, data: Uint8Array): Promise<void> {
    this.counts.append++;
    this.#fault();
    let f = this.#dir.get(name);
    if (f === undefined) {
      f = { synced: new Uint8Array(0), unsynced: [] };
      this.#dir.set(name, f);
    }
    f.unsynced.push(data.slice());
  }

  async sync(name: string): Promise<void> {
    this.counts.sync++;
    if (this.holdSyncs) await new Promise<void>((resolve) => this.#held.push(resolve));
    this.#fault();
    const f = this.#get(name);
    f.synced = concat([f.synced, ...f.unsynced]);
    f.unsynced = [];
  }

  async truncate(name: string, size: number): Promise<void> {
    this.counts.truncate++;
    const f = this.#get(name);
    f.synced = (await this.read(name)).slice(0, size);
    f.unsynced = [];
  }

  async rename(from: string, to: string): Promise<void> {
    this.counts.rename++;
    this.#dir.set(to, this.#get(from));
    this.#dir.delete(from);
  }

  async unlink(name: string): Promise<void> {
    this.counts.unlink++;
    this.#get(name);
    this.#dir.delete(name);
  }

  async syncDir(): Promise<void> {
    this.counts.syncDir++;
    this.#fault();
    this.#durableDir = new Map(this.#dir);
  }

  async close(): Promise<void> {}

  /** Let the syncs waiting (holdSyncs) go on. */
  release(): void {
    const held = this.#held;
    this.#held = [];
    for (const go of held) go();
  }

  /** Syncs waiting for release(). */
  get heldSyncs(): number {
    return this.#held.length;
  }

  /**
   * A power loss: see the class comment. The disk stays usable (as after a reboot); syncs that were waiting never
   * return (the process that made them is gone).
   */
  crash(): void {
    this.#held = [];
    this.#generation++;
    this.#dir = new Map(this.#durableDir);
    for (const f of new Set(this.#dir.values())) {
      const kept = Math.floor(this.#random() * (f.unsynced.length + 1));
      const parts = f.unsynced.slice(0, kept);
      if (kept > 0) {
        const last = parts[kept - 1]!;
        parts[kept - 1] = last.slice(0, Math.floor(this.#random() * (last.byteLength + 1)));
      }
      f.synced = concat([f.synced, ...parts]);
      f.unsynced = [];
    }
  }

  /**
   * This disk as one process sees it: once crash() is called, every call through the view fails (the process that
   * held it is gone), so a log left over from before the crash cannot write into the rebooted disk.
   */
  view(): Disk {
    const generation = this.#generation;
    const alive = (): void => {
      if (this.#generation !== generation) throw new Error('the process using this disk crashed');
    };
    const call =
      <A extends unknown[], R>(f: (...args: A) => Promise<R>) =>
      async (...args: A): Promise<R> => {
        alive();
        const r = await f(...args);
        alive();
        return r;
      };
    return {
      list: call(() => this.list()),
      read: call((name: string) => this.read(name)),
      append: call((name: string, data: Uint8Array) => this.append(name, data)),
      sync: call((name: string) => this.sync(name)),
      truncate: call((name: string, size: number) => this.truncate(name, size)),
      rename: call((from: string, to: string) => this.rename(from, to)),
      unlink: call((name: string) => this.unlink(name)),
      syncDir: call(() => this.syncDir()),
      close: call(() => this.close()),
    };
  }

  /** Flip one bit of a file at `offset` (a test planting corruption). */
  corrupt(name: string, offset: number): void {
    const f = this.#get(name);
    const all = concat([f.synced, ...f.unsynced]);
    all[offset] = all[offset]! ^ 0x10;
    f.synced = all;
    f.unsynced = [];
  }

  /** The size of a file. */
  size(name: string): number {
    const f = this.#get(name);
    return f.synced.byteLength + f.unsynced.reduce((n, p) => n + p.byteLength, 0);
  }
}
