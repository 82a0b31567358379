/**
 * One supervised child: a shell command run through `/bin/sh -c` in a
 * process group of its own (so that a signal reaches everything it starts),
 * its output passed through line by line with a prefix, and a stop sequence:
 * SIGTERM to the group, then SIGKILL when the grace period is over. A child
 * counts as exited only when its whole process group is empty.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { StringDecoder } from 'node:string_decoder';
import type { Readable, Writable } from 'node:stream';
import type { OutputHandle } from './reaper.js';

export interface ChildSpec {
  readonly command: string;
  readonly env: NodeJS.ProcessEnv;
  /** Prefix for each output line (e.g. `[queue-1] `); undefined: the child writes to our stdout/stderr directly. */
  readonly prefix: string | undefined;
  readonly stdout: Writable;
  readonly stderr: Writable;
}

export interface ChildExit {
  /** The shell's exit code (null if it was ended by a signal). */
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  /** SIGKILL had to be sent to the group. */
  readonly killed: boolean;
}

export interface StopOptions {
  /** Time between SIGTERM and SIGKILL. */
  readonly graceMs: number;
  /** Checked while waiting: true means send SIGKILL now (the lease is about to end). */
  readonly killNow?: (() => boolean) | undefined;
  readonly onKill?: (() => void) | undefined;
  readonly pollMs?: number | undefined;
}

/**
 * The shell script that runs the command (given as $1) once a line arrives on stdin; end-of-file instead (the
 * sidecar died before it released the child) exits with 125 and runs nothing. `exec` keeps the pid, so the process
 * group's id stays the one the reaper was told.
 */
const GATE = 'IFS= read -r _ || exit 125; exec /bin/sh -c "$1"';

/** Longest line kept in memory before it is passed on without its end. */
const MAX_LINE_CHARS = 64 * 1024;

export class SupervisedChild {
  readonly pid: number;
  readonly #proc: ChildProcess;
  readonly #mainExit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  #mainExited = false;
  #groupGone = false;
  #killed = false;
  readonly #streamsClosed: Promise<void>;

  private constructor(proc: ChildProcess, pid: number, spec: ChildSpec) {
    this.#proc = proc;
    this.pid = pid;
    this.#mainExit = new Promise((resolve) => {
      proc.once('exit', (code, signal) => {
        this.#mainExited = true;
        resolve({ code, signal });
      });
    });
    const closed: Promise<void>[] = [];
    if (spec.prefix !== undefined) {
      if (proc.stdout !== null) closed.push(passLines(proc.stdout, spec.stdout, spec.prefix));
      if (proc.stderr !== null) closed.push(passLines(proc.stderr, spec.stderr, spec.prefix));
    }
    this.#streamsClosed = Promise.all(closed).then(() => undefined);
  }

  /**
   * Start the process; resolves once it exists (rejects if it could not be started). The command itself runs only
   * after release(): until then the shell waits for a line on its stdin. The sidecar tells the reaper about the
   * process group first, then releases it; a sidecar killed in between (kill -9 under load can land there) closes
   * the pipe, the shell reads end-of-file and exits without running anything — there is never a running command the
   * reaper does not know about.
   */
  static start(spec: ChildSpec): Promise<SupervisedChild> {
    const proc = spawn('/bin/sh', ['-c', GATE, 'rebalancer-child', spec.command], {
      detached: true, // setsid: its own process group (and session), whose id is its pid
      env: spec.env,
      // stdin: the gate's pipe, closed by release(): the command reads end-of-file there, as from /dev/null.
      stdio: ['pipe', spec.prefix === undefined ? 'inherit' : 'pipe', spec.prefix === undefined ? 'inherit' : 'pipe'],
    });
    proc.stdin?.on('error', () => undefined); // EPIPE: the shell is gone already (killed before release)
    return new Promise((resolve, reject) => {
      proc.once('error', reject);
      proc.once('spawn', () => {
        proc.off('error', reject);
        proc.on('error', () => undefined); // e.g. a signal to an already reaped process
        resolve(new SupervisedChild(proc, proc.pid!, spec));
      });
    });
  }

  /** Let the command run (once its process group is known to whoever must stop it if this process dies). */
  release(): void {
    const stdin = this.#proc.stdin;
    if (stdin !== null && !stdin.destroyed) stdin.end('\n');
  }

  /** Resolves when the shell itself has exited (its group may still have members). */
  get mainExited(): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    return this.#mainExit;
  }

  /**
   * True while any process of the child's group is alive. Zombies do not count (on Linux, where /proc tells):
   * processes left behind by a killed shell are reparented to PID 1, and a PID 1 that does not reap (Node itself
   * in a container started without --init) would otherwise keep the group "alive" for good.
   */
  groupAlive(): boolean {
    if (this.#groupGone) return false;
    try {
      process.kill(-this.pid, 0);
      if (!this.#mainExited || liveInGroup(this.pid) !== false) return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EPERM') return true;
    }
    // Empty: from now on the id may be reused by an unrelated process group; never signal it again.
    if (this.#mainExited) this.#groupGone = true;
    return false;
  }

  /** Signal the whole group (nothing once it is known to be empty), and the shell (in case it left its group). */
  signal(signal: NodeJS.Signals): void {
    if (!this.#mainExited) this.#proc.kill(signal);
    if (this.#groupGone) return;
    try {
      process.kill(-this.pid, signal);
    } catch {
      // Already gone.
    }
  }

  /**
   * SIGTERM the group, wait until it is empty, sending SIGKILL when the grace
   * period is over (or `killNow()` says so). Resolves only when the group is
   * empty: a process that survives SIGKILL (uninterruptible sleep) keeps this
   * pending, which is what keeps the resource's lock held.
   */
  async stop(o: StopOptions): Promise<ChildExit> {
    const pollMs = o.pollMs ?? 50;
    const startedMs = performance.now();
    if (this.groupAlive()) this.signal('SIGTERM');
    for (;;) {
      if (this.#mainExited && !this.groupAlive()) break;
      if (!this.#killed && (performance.now() - startedMs >= o.graceMs || o.killNow?.() === true)) {
        this.#killed = true;
        o.onKill?.();
        this.signal('SIGKILL');
      }
      await new Promise((r) => setTimeout(r, pollMs));
    }
    return this.#result();
  }

  /** Wait for the shell to exit by itself; then stop what it left behind in its group, if anything. */
  async waitExit(leftovers: () => StopOptions): Promise<ChildExit> {
    await this.#mainExit;
    if (this.groupAlive()) return this.stop(leftovers());
    return this.#result();
  }

  /**
   * The read ends of the child's stdout and stderr pipes that are still open (none with --no-prefix: the child then
   * writes to our own stdout/stderr). Node's internal handles (`_handle`): the only way to hand a pipe's file
   * descriptor to another process over an IPC channel without that process starting to read it.
   */
  outputHandles(): OutputHandle[] {
    const out: OutputHandle[] = [];
    const add = (fd: 1 | 2, stream: Readable | null): void => {
      const handle = (stream as unknown as { _handle?: unknown } | null)?._handle;
      if (handle !== undefined && handle !== null) out.push({ fd, handle });
    };
    add(1, this.#proc.stdout);
    add(2, this.#proc.stderr);
    return out;
  }

  /** SIGKILL at once (forced shutdown). */
  kill(): void {
    this.#killed = true;
    this.signal('SIGKILL');
  }

  async #result(): Promise<ChildExit> {
    const main = await this.#mainExit;
    // The group is empty, so nobody writes to the pipes any more: give what they still hold a moment to arrive
    // (a process that left the group with setsid may keep them open: do not wait for it).
    await Promise.race([this.#streamsClosed, new Promise((r) => setTimeout(r, 200))]);
    return { code: main.code, signal: main.signal, killed: this.#killed };
  }
}

/**
 * Linux: whether any process of group `pgid` is alive and not a zombie (undefined where /proc cannot tell).
 * /proc/PID/stat is `pid (comm) state ppid pgrp …`; comm may contain spaces and parentheses.
 */
function liveInGroup(pgid: number): boolean | undefined {
  let pids: string[];
  try {
    pids = readdirSync('/proc').filter((d) => /^[0-9]+$/.test(d));
  } catch {
    return undefined;
  }
  for (const pid of pids) {
    let stat: string;
    try {
      stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    } catch {
      continue; // exited meanwhile
    }
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (Number(fields[2]) === pgid && fields[0] !== 'Z' && fields[0] !== 'X') return true;
  }
  return false;
}

/** Copy `from` to `to` line by line, each line prefixed. Resolves when `from` has closed. */
function passLines(from: Readable, to: Writable, prefix: string): Promise<void> {
  const decoder = new StringDecoder('utf8');
  let rest = '';
  const write = (text: string): void => {
    if (!to.write(text)) {
      from.pause();
      to.once('drain', () => from.resume());
    }
  };
  from.on('data', (chunk: Buffer) => {
    rest += decoder.write(chunk);
    let cut: number;
    let out = '';
    while ((cut = rest.indexOf('\n')) >= 0) {
      out += `${prefix}${rest.slice(0, cut)}\n`;
      rest = rest.slice(cut + 1);
    }
    if (rest.length > MAX_LINE_CHARS) {
      out += `${prefix}${rest}\n`;
      rest = '';
    }
    if (out !== '') write(out);
  });
  return new Promise((resolve) => {
    from.once('close', () => {
      rest += decoder.end();
      if (rest !== '') write(`${prefix}${rest}\n`);
      rest = '';
      resolve();
    });
  });
}
