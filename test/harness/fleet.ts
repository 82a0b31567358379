/**
 * A fleet of real worker processes, for the tests that run the library in processes of its own and do things to
 * them (test/groups, test/slots, test/rabbitmq): start a worker with its arguments and environment, wait for a line
 * or an event it prints, signal it (SIGTERM, SIGKILL, SIGSTOP/SIGCONT, SIGUSR2, …), wait for its exit.
 *
 * A worker is `node --import tsx <script> <args…>`, run from the repository root. Its stdout and stderr go to a log
 * file of its own, `<dir>/<name>.log`, which the worker writes itself: a busy or slow test process never blocks a
 * worker's writes, and the log outlives the worker for whoever reads the test's failure. The fleet reads the log
 * back incrementally to find lines and events.
 *
 * Cleanup stops only processes the fleet started (by their pid, never by name):
 *  - `killAll()`, for afterAll: SIGKILL to every worker still running, then wait for their exits;
 *  - a process 'exit' hook SIGKILLs the workers still running when the test process ends without that;
 *  - each worker runs under `setpriv --pdeathsig KILL`, so the kernel kills it when the test process dies, even
 *    by SIGKILL (no hook runs then).
 *
 * Also here, because the tests need it for their oracle files too: `LineTail`, the incremental reader of a file
 * that processes append lines to.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync, readFileSync, readSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { allThreadsStopped, holdsExclusiveLock, NO_PDEATHSIG_ENV } from './processes.js';
import { eventually, sleep } from './wait.js';

const REPO = fileURLToPath(new URL('../..', import.meta.url));

// ---------------------------------------------------------------- reading appended lines

/**
 * Reads a file that other processes append lines to, incrementally: each `read()` returns the whole lines added
 * since the previous one (without their newline; empty lines skipped). A last line not yet ended by a newline is
 * kept for a later call, so a line being written is never seen in half. A file that does not exist yet reads as
 * empty.
 */
export class LineTail {
  #offset = 0;
  #rest: Buffer = Buffer.alloc(0);

  constructor(readonly path: string) {}

  read(): string[] {
    let fd: number;
    try {
      fd = openSync(this.path, 'r');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw error;
    }
    const chunks: Buffer[] = [this.#rest];
    try {
      const buf = Buffer.alloc(1 << 20);
      for (;;) {
        const n = readSync(fd, buf, 0, buf.length, this.#offset);
        if (n === 0) break;
        this.#offset += n;
        chunks.push(Buffer.from(buf.subarray(0, n)));
      }
    } finally {
      closeSync(fd);
    }
    const all = chunks.length === 1 ? this.#rest : Buffer.concat(chunks);
    // Cut at the last newline as bytes, so that a multi-byte character is never split between two reads.
    const cut = all.lastIndexOf(0x0a);
    if (cut < 0) {
      this.#rest = all;
      return [];
    }
    this.#rest = Buffer.from(all.subarray(cut + 1));
    return all
      .subarray(0, cut)
      .toString('utf8')
      .split('\n')
      .filter((line) => line !== '');
  }
}

// ---------------------------------------------------------------- workers

export interface WorkerSpec {
  /** Unique in its fleet; names the log file, `<dir>/<name>.log`. */
  readonly name: string;
  /** The file to run with `node --import tsx` (absolute, or relative to the fleet's cwd). */
  readonly script: string;
  readonly args?: readonly string[];
  /** Added to this process's environment; a variable set to undefined is removed. */
  readonly env?: Readonly<Record<string, string | undefined>>;
}

export interface WaitForLineOptions {
  /** What the line means, for the timeout message (default: the pattern or "a matching line"). */
  readonly what?: string;
  readonly timeoutMs: number;
  /** Only lines from this index of `lines()` on (default 0: lines already printed count too). */
  readonly since?: number;
  readonly intervalMs?: number;
}

/** Workers still running, of every fleet of this process: what the 'exit' hook kills. */
const running = new Set<FleetWorker>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const w of running) w.kill();
  });
}

/** One worker process. */
export class FleetWorker {
  readonly name: string;
  readonly pid: number;
  readonly logPath: string;
  /** Resolves once the process has exited (never rejects). */
  readonly exit: Promise<void>;
  #exitStatus: string | undefined;
  readonly #child: ChildProcess;
  readonly #log: LineTail;
  readonly #lines: string[] = [];

  /** @internal Use Fleet.spawn. */
  constructor(child: ChildProcess, name: string, logPath: string) {
    if (child.pid === undefined) throw new Error(`worker ${name} could not be started`);
    this.#child = child;
    this.name = name;
    this.pid = child.pid;
    this.logPath = logPath;
    this.#log = new LineTail(logPath);
    this.exit = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        this.#exitStatus = signal ?? `code ${String(code)}`;
        running.delete(this);
        resolve();
      });
    });
    running.add(this);
  }

  get exited(): boolean {
    return this.#exitStatus !== undefined;
  }

  /** Once exited: the signal that ended it (`SIGKILL`), or `code N`. */
  get exitStatus(): string | undefined {
    return this.#exitStatus;
  }

  /** Sends `signal` unless the process has exited; says whether it was sent. */
  signal(signal: NodeJS.Signals): boolean {
    if (this.exited) return false;
    try {
      return this.#child.kill(signal);
    } catch {
      return false;
    }
  }

  /** SIGSTOP. Returns at once: the process may run on for a moment (see waitStopped). */
  pause(): void {
    this.signal('SIGSTOP');
  }

  /**
   * Resolves once every thread of the process has stopped. The kernel stops a multi-threaded process only when the
   * thread picked to take SIGSTOP runs, and its other threads (libuv's pool) may go on until then.
   */
  async waitStopped(timeoutMs = 5000): Promise<void> {
    const outcome = await eventually(
      () => {
        if (this.exited) return 'exited';
        return allThreadsStopped(this.pid) && 'stopped';
      },
      { what: `${this.name} (pid ${this.pid}) to stop`, timeoutMs, intervalMs: 10 },
    );
    if (outcome === 'exited') throw new Error(`${this.name} exited (${this.exitStatus ?? '?'}) instead of stopping`);
  }

  /**
   * SIGSTOP at a moment the process holds no exclusive lock on `files` (an SQLite database's, its -wal and -shm):
   * stopped inside a write transaction it would block every other writer until resumed, which SQLite cannot avoid
   * and the backend's docs state. Stops, waits until it is stopped, and if it holds such a lock, resumes it and
   * tries again a few milliseconds later (at most `tries` times). Returns how many stops it took.
   */
  async pauseOutsideLocks(files: readonly string[], tries = 100): Promise<number> {
    for (let i = 1; ; i++) {
      this.pause();
      await this.waitStopped();
      if (!holdsExclusiveLock(this.pid, files)) return i;
      if (i >= tries) throw new Error(`${this.name} (pid ${this.pid}) held a lock on ${files[0]} at ${tries} stops`);
      this.resume();
      await sleep(2 + Math.random() * 20);
    }
  }

  /** SIGCONT. */
  resume(): void {
    this.signal('SIGCONT');
  }

  /** SIGKILL (a stopped process dies too). Returns at once; `exit` resolves when it is gone. */
  kill(): void {
    this.signal('SIGKILL');
  }

  /** Waits up to `timeoutMs` for the process to exit; says whether it did. */
  async waitExit(timeoutMs: number): Promise<boolean> {
    if (this.exited) return true;
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), timeoutMs)));
    try {
      return await Promise.race([this.exit.then(() => true), timedOut]);
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * SIGTERM, then `overdue()` if the process is still running after `graceMs` (by default kill(): a test that
   * keeps books of its kills passes its own); resolves once it has exited.
   */
  async terminate(graceMs: number, overdue: () => void = () => this.kill()): Promise<void> {
    this.signal('SIGTERM');
    if (!(await this.waitExit(graceMs))) overdue();
    await this.exit;
  }

  /** For diagnostics: `state S utime 12 stime 3` (from /proc), `exited (code 0)`, or `gone`. */
  procState(): string {
    if (this.exited) return `exited (${this.exitStatus ?? '?'})`;
    try {
      const stat = readFileSync(`/proc/${this.pid}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      return `state ${f[0]} utime ${f[11]} stime ${f[12]}`;
    } catch {
      return 'gone';
    }
  }

  /** Every whole line of its log so far (stdout and stderr, in the order written). */
  lines(): readonly string[] {
    for (const line of this.#log.read()) this.#lines.push(line);
    return this.#lines;
  }

  /** The JSON objects among its log lines (other lines are skipped). */
  events<E = Record<string, unknown>>(): E[] {
    const out: E[] = [];
    for (const line of this.lines()) {
      if (!line.startsWith('{')) continue;
      try {
        out.push(JSON.parse(line) as E);
      } catch {
        // not JSON after all
      }
    }
    return out;
  }

  /**
   * Waits for a log line that `match` accepts (from `since` on) and returns it. Fails at once when the process
   * exits without printing one, and after `timeoutMs` otherwise.
   */
  async waitForLine(match: RegExp | ((line: string) => boolean), options: WaitForLineOptions): Promise<string> {
    const accepts = typeof match === 'function' ? match : (line: string): boolean => match.test(line);
    const what = options.what ?? (typeof match === 'function' ? 'a matching line' : `a line matching ${match}`);
    const since = options.since ?? 0;
    const found = await eventually(
      () => {
        const gone = this.exited; // before reading: a line printed just before the exit is in the file by then
        const line = this.lines().slice(since).find(accepts);
        if (line !== undefined) return { line };
        return gone && { line: undefined };
      },
      {
        what: `${what} from ${this.name}`,
        timeoutMs: options.timeoutMs,
        intervalMs: options.intervalMs ?? 25,
        context: () => `its log: ${this.logPath}`,
      },
    );
    if (found.line === undefined) {
      throw new Error(
        `${this.name} exited (${this.exitStatus ?? '?'}) before printing ${what}; its log: ${this.logPath}`,
      );
    }
    return found.line;
  }

  /** Waits for a JSON line of its log that `match` accepts, like waitForLine; returns the parsed object. */
  async waitForEvent<E = Record<string, unknown>>(
    match: (event: E) => boolean,
    options: WaitForLineOptions,
  ): Promise<E> {
    const parse = (line: string): E | undefined => {
      if (!line.startsWith('{')) return undefined;
      try {
        return JSON.parse(line) as E;
      } catch {
        return undefined;
      }
    };
    const line = await this.waitForLine(
      (l) => {
        const e = parse(l);
        return e !== undefined && match(e);
      },
      { ...options, what: options.what ?? 'a matching event' },
    );
    return parse(line)!;
  }
}

/** The workers of one test (or one scenario): spawn, find, clean up. */
export class Fleet {
  readonly #workers = new Map<string, FleetWorker>();

  /**
   * @param dir where the workers' logs go (it must exist)
   * @param cwd where workers run (default: the repository root, where `tsx` resolves)
   */
  constructor(
    readonly dir: string,
    readonly cwd: string = REPO,
  ) {}

  spawn(spec: WorkerSpec): FleetWorker {
    if (this.#workers.has(spec.name)) throw new Error(`a worker named ${spec.name} exists already`);
    installExitHook();
    const env: NodeJS.ProcessEnv = {};
    for (const [key, value] of Object.entries({ ...process.env, ...spec.env })) {
      if (value !== undefined) env[key] = value;
    }
    const logPath = join(this.dir, `${spec.name}.log`);
    const fd = openSync(logPath, 'a');
    // setpriv execs node: the pid is the worker's own. (Only the harness's own tests go without it.)
    const command = [process.execPath, '--import', 'tsx', spec.script, ...(spec.args ?? [])];
    if (process.env[NO_PDEATHSIG_ENV] !== '1') command.unshift('setpriv', '--pdeathsig', 'KILL', '--');
    let child: ChildProcess;
    try {
      child = spawn(command[0]!, command.slice(1), { cwd: this.cwd, env, stdio: ['ignore', fd, fd] });
    } finally {
      closeSync(fd);
    }
    // Without a listener a failed spawn would be an uncaught 'error' event; the constructor reports it.
    child.on('error', () => undefined);
    const worker = new FleetWorker(child, spec.name, logPath);
    this.#workers.set(spec.name, worker);
    return worker;
  }

  /** Every worker spawned, in order. */
  get workers(): readonly FleetWorker[] {
    return [...this.#workers.values()];
  }

  get(name: string): FleetWorker | undefined {
    return this.#workers.get(name);
  }

  /** The workers that have not exited. */
  running(): FleetWorker[] {
    return this.workers.filter((w) => !w.exited);
  }

  /** SIGKILL to every worker still running (paused ones too); resolves once all have exited. */
  async killAll(): Promise<void> {
    for (const w of this.running()) w.kill();
    await Promise.all(this.workers.map((w) => w.exit));
  }
}
