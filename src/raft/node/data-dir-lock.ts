/**
 * One process per data directory. Two nodes writing one log would interleave their records and each would trust
 * its own view of the hard state (two votes in a term): a second start on a directory in use is refused.
 *
 * A `LOCK` file holds the owner's pid, created with O_EXCL. A lock left by a process that is gone (kill -9, a crash)
 * is taken over: the pid is checked with signal 0. Inside one process, a set of locked directories refuses a second
 * node on the same directory (the pid would be our own).
 */
import { open, readFile, unlink } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { RebalancerError } from '../../errors.js';

const LOCK = 'LOCK';
const lockedHere = new Set<string>();

export class DataDirInUseError extends RebalancerError {
  readonly dataDir: string;
  readonly pid: number;
  constructor(dataDir: string, pid: number) {
    super(
      'CONFLICT',
      `the raft data directory ${dataDir} is in use by process ${pid}${pid === process.pid ? ' (this one)' : ''}: ` +
        'one node per directory. Stop that node first, or give this one its own dataDir',
    );
    this.dataDir = dataDir;
    this.pid = pid;
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'; // exists, owned by someone else
  }
}

/** Take the directory's lock; resolves with its release. */
export async function lockDataDir(dir: string): Promise<() => Promise<void>> {
  const abs = resolve(dir);
  if (lockedHere.has(abs)) throw new DataDirInUseError(abs, process.pid);
  const path = join(abs, LOCK);
  for (let attempt = 0; ; attempt++) {
    try {
      const h = await open(path, 'wx');
      await h.writeFile(`${process.pid}\n`);
      await h.close();
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST' || attempt > 0) throw err;
      const pid = Number((await readFile(path, 'utf8').catch(() => '')).trim());
      if (Number.isSafeInteger(pid) && pid > 0 && pid !== process.pid && alive(pid)) {
        throw new DataDirInUseError(abs, pid);
      }
      await unlink(path).catch(() => undefined); // left by a process that is gone: take it over
    }
  }
  lockedHere.add(abs);
  return async () => {
    lockedHere.delete(abs);
    await unlink(path).catch(() => undefined);
  };
}
