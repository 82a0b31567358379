/**
 * Process bookkeeping for the real-server test harness: spawning servers in
 * their own process group, recording them on disk, and making sure they die
 * with the test process (or, failing that, at the next harness load).
 *
 * Three layers, because each covers a gap in the others:
 *  1. `setpriv --pdeathsig KILL` makes the kernel SIGKILL a server the moment
 *     the node process that spawned it dies, even by SIGKILL (the only layer
 *     that survives `kill -9` of the test runner).
 *  2. 'exit' / signal hooks kill process groups and delete temp dirs
 *     synchronously (pdeathsig only reaches the main pid, not its children,
 *     and does nothing for the temp dirs).
 *  3. A record file per server instance in REGISTRY_DIR lets the next harness
 *     load reap whatever is left of a process that died abruptly.
 *
 * Every kill is guarded by the pid's start time from /proc, so a recycled pid
 * is never signalled: only processes this harness recorded are ever killed.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import {
  closeSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  unlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

/** Temp dirs of servers are `os.tmpdir()/rebalancer-test-<kind>-XXXXXX`. */
export const TEMP_DIR_PREFIX = 'rebalancer-test-';
const SHARED_DIR = join(tmpdir(), 'rebalancer-test-servers');
/**
 * Overrides where instance records are kept; only the harness's own tests set
 * it, so that other harness processes' reapers stay out of their way.
 */
const REGISTRY_DIR_ENV = 'REBALANCER_TEST_REGISTRY_DIR';
/** Where the records of live server instances are kept, one file each. */
export const REGISTRY_DIR = process.env[REGISTRY_DIR_ENV] || SHARED_DIR;
/** Port reservations are always machine-wide. */
const PORTS_DIR = join(SHARED_DIR, 'ports');

/**
 * Set to 1 only by the harness's own tests: lets them simulate a runner whose
 * servers (or fleet workers, fleet.ts) outlive it, to prove the reaper (or the
 * exit hook) works.
 */
export const NO_PDEATHSIG_ENV = 'REBALANCER_TEST_NO_PDEATHSIG';

interface ProcStat {
  readonly state: string;
  readonly ppid: number;
  readonly pgrp: number;
  readonly startTicks: string;
}

function readProcStat(pid: number): ProcStat | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  // Field 2 (comm) may contain spaces and ')'; the fields after the last ')'
  // are fixed: state is field 3, pgrp field 5, starttime field 22.
  const rest = text.slice(text.lastIndexOf(')') + 2).split(' ');
  const state = rest[0];
  const ppid = Number(rest[1]);
  const pgrp = Number(rest[2]);
  const startTicks = rest[19];
  if (state === undefined || startTicks === undefined || !Number.isInteger(pgrp)) return undefined;
  return { state, ppid, pgrp, startTicks };
}

/** A pid plus its start time: unlike a bare pid, never names a recycled process. */
export interface ProcessIdentity {
  readonly pid: number;
  readonly startTicks: string;
}

function identityOf(pid: number): ProcessIdentity | undefined {
  const stat = readProcStat(pid);
  return stat === undefined ? undefined : { pid, startTicks: stat.startTicks };
}

function isSameProcessAlive(id: ProcessIdentity): boolean {
  const stat = readProcStat(id.pid);
  return stat !== undefined && stat.startTicks === id.startTicks && stat.state !== 'Z';
}

const self: ProcessIdentity = identityOf(process.pid) ?? { pid: process.pid, startTicks: '?' };

function signalQuietly(pid: number, signal: NodeJS.Signals): boolean {
  try {
    process.kill(pid, signal);
    return true;
  } catch {
    return false;
  }
}

interface ProcEntry extends ProcStat {
  readonly pid: number;
}

/** Every process on the machine, from /proc (a few ms for a few hundred). */
function scanProcesses(): ProcEntry[] {
  let entries: string[];
  try {
    entries = readdirSync('/proc');
  } catch {
    return [];
  }
  const result: ProcEntry[] = [];
  for (const entry of entries) {
    const pid = Number(entry);
    if (!Number.isInteger(pid)) continue;
    const stat = readProcStat(pid);
    if (stat !== undefined) result.push({ pid, ...stat });
  }
  return result;
}

/**
 * True while a live member of the group exists. Zombies do not count: they
 * are dead, and orphaned ones wait for init, which here reaps only every few
 * seconds.
 */
function groupHasLiveMember(pgid: number): boolean {
  try {
    process.kill(-pgid, 0);
  } catch {
    return false;
  }
  return scanProcesses().some((p) => p.pgrp === pgid && p.state !== 'Z');
}

const SLEEP_CELL = new Int32Array(new SharedArrayBuffer(4));

/** Every thread of `pid` is stopped (or the process is gone). */
export function allThreadsStopped(pid: number): boolean {
  let tids: string[];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    return true;
  }
  return tids.every((tid) => {
    let text: string;
    try {
      text = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
    } catch {
      return true;
    }
    const state = text.slice(text.lastIndexOf(')') + 2, text.lastIndexOf(')') + 3);
    return state === 'T' || state === 't' || state === 'Z' || state === 'X';
  });
}

/**
 * Whether `pid` holds an exclusive POSIX lock (fcntl, as SQLite takes them) on any of `files` — read from
 * /proc/locks, matched by inode. SQLite holds one only inside a write transaction, a checkpoint or a WAL
 * recovery: a process stopped then blocks every writer of the file (a documented SQLite limitation), so a test
 * that means to stop a process between its writes checks this after the stop.
 */
export function holdsExclusiveLock(pid: number, files: readonly string[]): boolean {
  const inodes = new Set<string>();
  for (const f of files) {
    try {
      inodes.add(String(statSync(f).ino));
    } catch {
      // not created (yet): nobody can hold a lock on it
    }
  }
  if (inodes.size === 0) return false;
  let text: string;
  try {
    text = readFileSync('/proc/locks', 'utf8');
  } catch {
    return false;
  }
  // "1: POSIX  ADVISORY  WRITE 1234 08:01:5678 120 120"
  return text.split('\n').some((line) => {
    const f = line.trim().split(/\s+/);
    return f[1] === 'POSIX' && f[3] === 'WRITE' && f[4] === String(pid) && inodes.has(f[5]?.split(':')[2] ?? '');
  });
}

function killIfSame(id: ProcessIdentity): void {
  if (isSameProcessAlive(id)) signalQuietly(id.pid, 'SIGKILL');
}

/** A live (not zombie) process with this pid exists. */
export function isProcessAlive(pid: number): boolean {
  const stat = readProcStat(pid);
  return stat !== undefined && stat.state !== 'Z';
}

/** All descendants of `rootPid` (children, grandchildren, ...), found through /proc. */
export function descendantsOf(rootPid: number): ProcessIdentity[] {
  const children = new Map<number, ProcessIdentity[]>();
  for (const proc of scanProcesses()) {
    const siblings = children.get(proc.ppid) ?? [];
    siblings.push({ pid: proc.pid, startTicks: proc.startTicks });
    children.set(proc.ppid, siblings);
  }
  const result: ProcessIdentity[] = [];
  const queue = [rootPid];
  for (let pid = queue.shift(); pid !== undefined; pid = queue.shift()) {
    for (const child of children.get(pid) ?? []) {
      result.push(child);
      queue.push(child.pid);
    }
  }
  return result;
}

/** SIGKILL a recorded process and its group, if it is still the process we started. */
function killRecordedSync(id: ProcessIdentity): void {
  const stat = readProcStat(id.pid);
  if (stat === undefined || stat.startTicks !== id.startTicks) return;
  const descendants = descendantsOf(id.pid);
  // Servers are spawned as group leaders; only then is the group ours to kill.
  if (stat.pgrp === id.pid) signalQuietly(-id.pid, 'SIGKILL');
  signalQuietly(id.pid, 'SIGKILL');
  for (const child of descendants) killIfSame(child);
}

/** Delete a temp dir, but only one that has the shape of ours. */
function removeTempDirSync(dir: string): void {
  if (dirname(dir) !== tmpdir() || !basename(dir).startsWith(TEMP_DIR_PREFIX) || dir === SHARED_DIR) {
    return;
  }
  // maxRetries: a process killed a moment ago may still be finishing a write.
  rmSync(dir, { recursive: true, force: true, maxRetries: 3, retryDelay: 50 });
}

function unlinkQuietly(path: string): void {
  try {
    unlinkSync(path);
  } catch {
    // already gone
  }
}

function writeJsonAtomically(path: string, value: unknown): void {
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, JSON.stringify(value));
  renameSync(tmp, path);
}

interface OwnedRecord {
  readonly owner: ProcessIdentity;
}

interface InstanceRecord extends OwnedRecord {
  readonly kind: string;
  readonly dir: string;
  readonly processes: readonly ProcessIdentity[];
}

function ownerIsDead(record: OwnedRecord): boolean {
  return !isSameProcessAlive(record.owner);
}

function readJson(path: string): unknown {
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as unknown;
  } catch {
    return undefined;
  }
}

function isOwnedRecord(value: unknown): value is OwnedRecord {
  if (typeof value !== 'object' || value === null) return false;
  const owner = (value as { owner?: unknown }).owner;
  return (
    typeof owner === 'object' &&
    owner !== null &&
    typeof (owner as { pid?: unknown }).pid === 'number' &&
    typeof (owner as { startTicks?: unknown }).startTicks === 'string'
  );
}

/**
 * Kill and delete what harness processes that no longer exist left behind.
 * Runs synchronously at module load; exported for the harness's own tests.
 */
export function reapLeftovers(registryDir: string = REGISTRY_DIR): { readonly reapedInstances: number } {
  mkdirSync(PORTS_DIR, { recursive: true });
  mkdirSync(registryDir, { recursive: true });
  let reapedInstances = 0;
  for (const name of readdirSync(registryDir)) {
    if (!name.endsWith('.json')) continue;
    const path = join(registryDir, name);
    const record = readJson(path);
    // A record being written right now by a live owner is never half-visible
    // (atomic rename), so an unreadable one is debris.
    if (!isOwnedRecord(record)) {
      unlinkQuietly(path);
      continue;
    }
    if (!ownerIsDead(record)) continue;
    const instance = record as InstanceRecord;
    for (const id of instance.processes ?? []) killRecordedSync(id);
    if (typeof instance.dir === 'string') removeTempDirSync(instance.dir);
    unlinkQuietly(path);
    reapedInstances += 1;
  }
  for (const name of readdirSync(PORTS_DIR)) {
    const path = join(PORTS_DIR, name);
    const record = readJson(path);
    if (!isOwnedRecord(record) || ownerIsDead(record)) unlinkQuietly(path);
  }
  return { reapedInstances };
}

/**
 * Reserve a port for this process across all harness processes on the
 * machine: an O_EXCL file per port. Lock-free (a taken port is skipped, never
 * waited for); the OS-level check that the port is free is the caller's.
 */
export function tryReservePort(port: number): boolean {
  try {
    writeFileSync(join(PORTS_DIR, String(port)), JSON.stringify({ owner: self }), { flag: 'wx' });
    return true;
  } catch {
    return false;
  }
}

export function releasePort(port: number): void {
  const path = join(PORTS_DIR, String(port));
  const record = readJson(path);
  if (isOwnedRecord(record) && record.owner.pid === self.pid) unlinkQuietly(path);
}

export interface LaunchSpec {
  readonly command: string;
  readonly args: readonly string[];
  /** Extra environment; variables with an undefined value are removed. */
  readonly env?: Readonly<Record<string, string | undefined>>;
  /** Run as this user (and its groups) instead of root. */
  readonly user?: string;
  /** Appended to, so the log of every run of a server is in one file. */
  readonly logPath: string;
  readonly cwd: string;
}

/** One spawned OS process, leader of its own process group. */
export class ManagedProcess {
  readonly pid: number;
  readonly logPath: string;
  /** Resolves when the main process has exited (its group may linger briefly). */
  readonly exited: Promise<void>;
  #exitDescription: string | undefined;

  private constructor(child: ChildProcess, pid: number, logPath: string) {
    this.pid = pid;
    this.logPath = logPath;
    this.exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        this.#exitDescription = signal === null ? `exit code ${String(code)}` : `signal ${signal}`;
        resolve();
      });
    });
  }

  static spawn(spec: LaunchSpec): ManagedProcess {
    const wrapper = ['--pdeathsig', 'KILL'];
    if (process.env[NO_PDEATHSIG_ENV] === '1') wrapper.length = 0;
    if (spec.user !== undefined) {
      wrapper.push(`--reuid=${spec.user}`, `--regid=${spec.user}`, '--init-groups');
    }
    const overrides = spec.env ?? {};
    const env: NodeJS.ProcessEnv = {};
    for (const [key, value] of Object.entries({ ...process.env, ...overrides })) {
      if (value !== undefined) env[key] = value;
    }
    const logFd = openSync(spec.logPath, 'a');
    try {
      // setpriv execs the server, so the pid we get is the server's own.
      // detached: the server leads a new process group (and session), so
      // SIGSTOP/SIGKILL reach its children, and a Ctrl-C aimed at the test
      // runner's group does not hit it before our hooks run.
      const child = spawn('setpriv', [...wrapper, '--', spec.command, ...spec.args], {
        cwd: spec.cwd,
        env,
        detached: true,
        stdio: ['ignore', logFd, logFd],
      });
      // Without a listener a failed spawn is an uncaught 'error' event.
      child.on('error', () => undefined);
      if (child.pid === undefined) throw new Error(`could not spawn setpriv for ${spec.command}`);
      // Not unref'd on purpose: a server keeps the event loop alive only
      // while it runs, and tests stop them; the 'exit' hook covers the rest.
      return new ManagedProcess(child, child.pid, spec.logPath);
    } finally {
      closeSync(logFd);
    }
  }

  get hasExited(): boolean {
    return this.#exitDescription !== undefined;
  }

  /** `exit code N` or `signal S` once exited. */
  get exitDescription(): string | undefined {
    return this.#exitDescription;
  }

  /** Signal the main process only. */
  signal(signal: NodeJS.Signals): void {
    if (!this.hasExited) signalQuietly(this.pid, signal);
  }

  /**
   * Signal the whole process tree: the group, then every descendant. The
   * group alone is not enough: PostgreSQL backends call setsid(), so they
   * leave the postmaster's group. The group goes first so that a SIGSTOP
   * freezes the parent before its children are listed (no fork can slip in).
   */
  signalTree(signal: NodeJS.Signals): number[] {
    signalQuietly(-this.pid, signal);
    const descendants = descendantsOf(this.pid).map((id) => id.pid);
    for (const pid of descendants) signalQuietly(pid, signal);
    return [this.pid, ...descendants];
  }

  /**
   * SIGSTOP the tree and return only once every thread of it has stopped.
   * kill() returns before that: the kernel stops a multi-threaded process
   * only when the thread picked to take the signal gets to run, and until
   * then its other threads keep serving (seen here with ZooKeeper's JVM
   * answering a request 'after' the pause on a loaded machine).
   */
  stopTreeSync(timeoutMs: number): void {
    const pids = this.signalTree('SIGSTOP');
    const deadline = Date.now() + timeoutMs;
    while (!pids.every(allThreadsStopped)) {
      if (Date.now() >= deadline) {
        throw new Error(`process tree of ${this.pid} did not stop within ${timeoutMs} ms (a thread in D state?)`);
      }
      // A synchronous 1 ms sleep: pause() is synchronous, and usually this
      // takes well under a millisecond.
      Atomics.wait(SLEEP_CELL, 0, 0, 1);
    }
  }

  /** SIGKILL the tree without waiting; safe inside a process 'exit' hook. */
  killSync(): ProcessIdentity[] {
    // Listed before the kill: once the parent is dead, its children are
    // reparented to init and can no longer be found through it.
    const descendants = descendantsOf(this.pid);
    signalQuietly(-this.pid, 'SIGKILL');
    this.signal('SIGKILL');
    for (const id of descendants) killIfSame(id);
    return descendants;
  }

  /** Wait for the main process to exit; false if it did not within the bound. */
  async waitExit(timeoutMs: number): Promise<boolean> {
    if (this.hasExited) return true;
    const ac = new AbortController();
    const timedOut = sleep(timeoutMs, false, { signal: ac.signal }).catch(() => false);
    const result = await Promise.race([this.exited.then(() => true), timedOut]);
    ac.abort();
    return result;
  }

  /**
   * SIGKILL the tree, wait for the main process, then for the rest (e.g.
   * PostgreSQL backends, which would keep its shared memory attached and
   * make the next start on the same data dir fail).
   */
  async kill(): Promise<void> {
    const descendants = this.killSync();
    await this.exited;
    await this.#waitTreeGone(descendants);
  }

  /**
   * Graceful stop: `signal` to the main process, SIGCONT in case it is paused,
   * SIGKILL to the tree after `graceMs`.
   */
  async terminate(signal: NodeJS.Signals, graceMs: number): Promise<void> {
    this.signal(signal);
    this.signalTree('SIGCONT');
    if (!(await this.waitExit(graceMs))) this.killSync();
    await this.exited;
    // Stragglers of a clean exit (e.g. Erlang's port helpers) go too.
    signalQuietly(-this.pid, 'SIGKILL');
    await this.#waitTreeGone([]);
  }

  async #waitTreeGone(descendants: readonly ProcessIdentity[]): Promise<void> {
    // Orphans are reaped by init, which takes a moment; bounded so a stuck
    // process (D state) cannot hang the suite.
    const deadline = Date.now() + 5000;
    const alive = (): boolean => groupHasLiveMember(this.pid) || descendants.some(isSameProcessAlive);
    while (alive() && Date.now() < deadline) {
      signalQuietly(-this.pid, 'SIGKILL');
      for (const id of descendants) killIfSame(id);
      await sleep(10);
    }
  }
}

let instanceSeq = 0;

/**
 * Everything one server instance owns: a temp dir, reserved ports, and the
 * processes it spawned over its life. Kept in a record file for the reaper.
 */
export class Instance {
  readonly kind: string;
  readonly dir: string;
  readonly #recordPath: string;
  readonly #ports = new Set<number>();
  readonly #processes = new Set<ManagedProcess>();
  #disposed = false;

  constructor(kind: string) {
    this.kind = kind;
    instanceSeq += 1;
    this.#recordPath = join(REGISTRY_DIR, `${process.pid}-${instanceSeq}.json`);
    this.dir = mkdtempSync(join(tmpdir(), `${TEMP_DIR_PREFIX}${kind}-`));
    // Recorded at once (before any process exists), so the reaper can delete
    // the dir even if this process dies before the server is spawned.
    this.#save();
    registry().instances.add(this);
  }

  get disposed(): boolean {
    return this.#disposed;
  }

  /** Port reservations are released when the instance is disposed. */
  adoptPort(port: number): void {
    this.#ports.add(port);
  }

  spawn(spec: LaunchSpec): ManagedProcess {
    if (this.#disposed) throw new Error(`${this.kind} server was already disposed (stopAllServers)`);
    const proc = ManagedProcess.spawn(spec);
    this.#processes.add(proc);
    this.#save();
    void proc.exited.then(() => {
      this.#processes.delete(proc);
      if (!this.#disposed) this.#save();
    });
    return proc;
  }

  /** Kill everything, delete the temp dir, release ports, drop the record. */
  async dispose(): Promise<void> {
    if (this.#disposed) return;
    this.#disposed = true;
    await Promise.all([...this.#processes].map((proc) => proc.kill()));
    this.#cleanupFilesSync();
    registry().instances.delete(this);
  }

  /** For process 'exit' and signal hooks: no awaiting possible there. */
  disposeSync(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    for (const proc of this.#processes) proc.killSync();
    this.#cleanupFilesSync();
    registry().instances.delete(this);
  }

  #cleanupFilesSync(): void {
    try {
      removeTempDirSync(this.dir);
    } catch {
      // Leave it to the reaper rather than fail a teardown.
      return;
    }
    for (const port of this.#ports) releasePort(port);
    unlinkQuietly(this.#recordPath);
  }

  #save(): void {
    const processes: ProcessIdentity[] = [];
    for (const proc of this.#processes) {
      const id = identityOf(proc.pid);
      if (id !== undefined) processes.push(id);
    }
    const record: InstanceRecord = { owner: self, kind: this.kind, dir: this.dir, processes };
    writeJsonAtomically(this.#recordPath, record);
  }
}

interface Registry {
  readonly instances: Set<Instance>;
}

// One registry per OS process even if this module is evaluated more than once
// (vitest re-imports modules per test file), so hooks are installed once.
const REGISTRY_KEY = Symbol.for('rebalancer.test.harness.registry');

function registry(): Registry {
  const holder = globalThis as { [REGISTRY_KEY]?: Registry };
  let reg = holder[REGISTRY_KEY];
  if (reg === undefined) {
    reg = { instances: new Set() };
    holder[REGISTRY_KEY] = reg;
    installHooks(reg);
  }
  return reg;
}

export function liveInstances(): Instance[] {
  return [...registry().instances];
}

function cleanupSync(reg: Registry): void {
  for (const instance of [...reg.instances]) {
    try {
      instance.disposeSync();
    } catch {
      // Keep going: the other servers must die too.
    }
  }
}

function installHooks(reg: Registry): void {
  process.on('exit', () => cleanupSync(reg));
  const onSignal = (signal: NodeJS.Signals): void => {
    cleanupSync(reg);
    // Our listener replaced the default action (exit). If nobody else
    // handles the signal, restore that default and re-raise it, so the
    // process still dies the way the sender intended.
    if (process.listenerCount(signal) === 1) {
      process.removeListener(signal, onSignal);
      process.kill(process.pid, signal);
    }
  };
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(signal, onSignal);
  // A monitor, not a handler: adding an 'uncaughtException' handler would
  // stop the process from crashing. Only clean up when the crash is real
  // (vitest installs handlers and keeps running; then servers must stay).
  process.on('uncaughtExceptionMonitor', () => {
    if (process.listenerCount('uncaughtException') === 0) cleanupSync(reg);
  });
}

reapLeftovers();
registry();
