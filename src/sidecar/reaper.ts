/**
 * The reaper: a small helper process that stops the sidecar's children when
 * the sidecar itself can no longer do it — because it died without a chance
 * to (kill -9, an OOM kill, a crash in native code), or because it is frozen
 * (SIGSTOP, Ctrl-Z, a long stall of its event loop) while its lease runs out.
 *
 * Children run in their own process groups (so that a signal reaches
 * everything they start), which also means that nothing kills them when the
 * sidecar dies, and Node cannot set PR_SET_PDEATHSIG. So the sidecar starts
 * one Node process, in a process group and session of its own (a signal to
 * the sidecar's group, a terminal's Ctrl-C or Ctrl-Z, does not reach it),
 * whose stdin is a pipe from the sidecar (control messages, one JSON line
 * each: written at once, never queued) and which has an IPC channel to it
 * (for file descriptors, and the reaper's reports). The sidecar tells it:
 *
 *  - `add` / `stopping` / `remove`: a child's process group started / is being
 *    stopped by the sidecar itself / is empty;
 *  - `output`: the read end of a child's stdout or stderr pipe (the file
 *    descriptor itself, passed over the channel). The reaper holds it without
 *    reading while the sidecar lives, so the pipe always has a reader;
 *  - `lease`: when the children must get SIGTERM and, at the latest, SIGKILL
 *    if no newer word comes from the sidecar — times on the host's monotonic
 *    clock (process.hrtime, the same clock in every process), sent again
 *    whenever the sidecar's lease is renewed.
 *
 * The reaper SIGTERMs every listed group when the lease's stop time passes
 * (the sidecar is frozen: it would have renewed or stopped them itself) and
 * SIGKILLs what is left at the lease's kill time, which comes before the
 * session can expire on the server; it reports what it did over the channel,
 * which the sidecar reads when it runs again. When the pipe and the channel
 * have closed (the kernel closes them when the sidecar exits, however it
 * exits), the reaper
 * starts reading the held pipes — prefixing lines and writing them to its own
 * stdout/stderr, which are the sidecar's — so that a child that writes while
 * it drains does not die of SIGPIPE, SIGTERMs every listed group, SIGKILLs
 * what is left at min(now + drain timeout, the lease's kill time), and exits.
 *
 * What it does not cover: a child that leaves its process group (setsid)
 * escapes every signal; a process in uninterruptible sleep outlives even
 * SIGKILL for a while; a freeze of the whole host or container (the reaper
 * and the children are frozen too, and on thaw a child may run before the
 * reaper does). In those cases only the fencing token protects the resource.
 */
import { spawn, type ChildProcess } from 'node:child_process';

/**
 * The reaper's program (run with `node -e`; plain JavaScript, no imports of ours, so that it runs the same from the
 * sources and from dist/). argv: drain timeout ms, fallback grace ms (when no lease is known).
 */
const PROGRAM = String.raw`'use strict';
// rebalancer sidecar reaper: see src/sidecar/reaper.ts in the rebalancer package.
process.title = 'rebalancer-reaper';
const fs = require('node:fs');
const net = require('node:net');
const { StringDecoder } = require('node:string_decoder');
for (const s of ['SIGINT', 'SIGHUP', 'SIGTERM', 'SIGTSTP']) process.on(s, () => {});
process.stdout.on('error', () => {});
process.stderr.on('error', () => {});
const drainMs = Number(process.argv[1]);
const fallbackGraceMs = Number(process.argv[2]);
const MAX_LINE = 64 * 1024;
const now = () => Number(process.hrtime.bigint()) / 1e6;
/** pgid -> { outputs: [{ handle, fd, prefix }], termed, killed } */
const groups = new Map();
/** Pipes that came before their group's 'add' (pgid -> outputs); groups removed before their pipes came. */
const early = new Map();
const removed = new Set();
let termAt = Infinity;
let killAt = Infinity;
let leaseKillAt = Infinity;
let orphaned = false;
let timer;
let forwarding = 0;

function signal(pgid, sig) {
  try { process.kill(-pgid, sig); } catch {}
}
/** A process of the group runs (on Linux zombies do not count: a frozen sidecar cannot reap its children). */
function alive(pgid) {
  try { process.kill(-pgid, 0); } catch (e) { return e.code === 'EPERM'; }
  let pids;
  try { pids = fs.readdirSync('/proc'); } catch { return true; }
  for (const pid of pids) {
    if (!/^[0-9]+$/.test(pid)) continue;
    let stat;
    try { stat = fs.readFileSync('/proc/' + pid + '/stat', 'utf8'); } catch { continue; }
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (Number(f[2]) === pgid && f[0] !== 'Z' && f[0] !== 'X') return true;
  }
  return false;
}
function tell(message) {
  if (process.connected) try { process.send(message); } catch {}
}
function closeOutputs(g) {
  for (const o of g.outputs) try { o.handle.close(); } catch {}
  g.outputs = [];
}
function check() {
  if (timer !== undefined) clearTimeout(timer);
  timer = undefined;
  const t = now();
  for (const [pgid, g] of groups) {
    if (orphaned && !alive(pgid)) { groups.delete(pgid); continue; }
    const due = (!g.killed && t >= killAt) || (!g.termed && t >= termAt);
    if (due && !orphaned && !alive(pgid)) { g.termed = g.killed = true; continue; } // gone: nothing to do
    if (!g.killed && t >= killAt) {
      g.killed = true;
      signal(pgid, 'SIGKILL');
      tell({ op: 'signalled', pgid, signal: 'SIGKILL', lateMs: Math.round(t - killAt) });
    } else if (!g.termed && t >= termAt) {
      g.termed = true;
      signal(pgid, 'SIGTERM');
      tell({ op: 'signalled', pgid, signal: 'SIGTERM', lateMs: Math.round(t - termAt) });
    }
  }
  if (orphaned) {
    // Done once every group is empty or has been sent SIGKILL, and what they wrote has been passed on.
    if ([...groups.values()].every((g) => g.killed)) return finish();
    timer = setTimeout(check, 50);
    return;
  }
  let next = Infinity;
  for (const g of groups.values()) {
    if (!g.termed) next = Math.min(next, termAt);
    else if (!g.killed) next = Math.min(next, killAt);
  }
  if (next !== Infinity) timer = setTimeout(check, Math.max(1, Math.ceil(next - t)));
}
let finishing = false;
/** Exit once what the children wrote has been passed on (at most 1 s: a process that left its group may hold a pipe). */
function finish() {
  if (finishing) return;
  finishing = true;
  if (forwarding === 0) process.exit(0);
  setTimeout(() => process.exit(0), 1000);
}
function forward(o) {
  forwarding++;
  const out = o.fd === 1 ? process.stdout : process.stderr;
  const decoder = new StringDecoder('utf8');
  let rest = '';
  let socket;
  try {
    socket = new net.Socket({ handle: o.handle, readable: true, writable: false });
  } catch {
    forwarding--;
    return;
  }
  socket.on('data', (chunk) => {
    rest += decoder.write(chunk);
    let text = '';
    let cut;
    while ((cut = rest.indexOf('\n')) >= 0) {
      text += o.prefix + rest.slice(0, cut) + '\n';
      rest = rest.slice(cut + 1);
    }
    if (rest.length > MAX_LINE) { text += o.prefix + rest + '\n'; rest = ''; }
    if (text !== '') out.write(text);
  });
  socket.on('error', () => {});
  socket.on('close', () => {
    rest += decoder.end();
    if (rest !== '') out.write(o.prefix + rest + '\n');
    rest = '';
    forwarding--;
    if (finishing && forwarding === 0) process.exit(0);
  });
}
/** Control messages: one JSON object per line on stdin, so that none waits behind a file descriptor's transfer. */
function control(m) {
  switch (m.op) {
    case 'lease':
      termAt = m.termAtMs;
      killAt = leaseKillAt = m.killAtMs;
      break;
    case 'add':
      groups.set(m.pgid, { outputs: early.get(m.pgid) ?? [], termed: false, killed: false });
      early.delete(m.pgid);
      removed.delete(m.pgid);
      break;
    case 'stopping': {
      // The sidecar is stopping this group itself: no SIGTERM from us too, but still SIGKILL by the lease.
      const g = groups.get(m.pgid);
      if (g !== undefined) g.termed = true;
      break;
    }
    case 'remove': {
      const g = groups.get(m.pgid);
      if (g !== undefined) { closeOutputs(g); groups.delete(m.pgid); }
      removed.add(m.pgid);
      if (removed.size > 10000) removed.delete(removed.values().next().value); // only the latest matter
      break;
    }
  }
  check();
}
let input = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (chunk) => {
  input += chunk;
  let cut;
  while ((cut = input.indexOf('\n')) >= 0) {
    const line = input.slice(0, cut);
    input = input.slice(cut + 1);
    let m;
    try { m = JSON.parse(line); } catch { continue; }
    if (m !== null && typeof m === 'object') control(m);
  }
});
process.stdin.on('error', () => {});
/** The read end of a child's pipe, over the IPC channel. */
process.on('message', (m, handle) => {
  if (m === null || typeof m !== 'object' || m.op !== 'output' || handle === undefined) return;
  const o = { handle, fd: m.fd, prefix: m.prefix };
  const g = groups.get(m.pgid);
  if (g === undefined) {
    // The two channels are read independently: its 'add' may not have been read yet, or its 'remove' already.
    if (removed.has(m.pgid)) { try { handle.close(); } catch {} return; }
    early.set(m.pgid, [...(early.get(m.pgid) ?? []), o]);
    return;
  }
  if (orphaned) forward(o);
  else g.outputs.push(o);
});
// The sidecar is gone once both its stdin pipe and its channel are closed (the kernel closes both when it exits,
// and each ends only after what was sent on it has been read).
let inputEnded = false;
let channelClosed = false;
process.stdin.on('end', () => { inputEnded = true; orphan(); });
process.on('disconnect', () => { channelClosed = true; orphan(); });
function orphan() {
  if (!inputEnded || !channelClosed || orphaned) return;
  orphaned = true;
  const t = now();
  for (const g of groups.values()) { for (const o of g.outputs) forward(o); g.outputs = []; }
  termAt = t;
  killAt = Math.min(t + drainMs, leaseKillAt === Infinity ? t + fallbackGraceMs : leaseKillAt);
  check();
}
`;

/** When the reaper must act if the sidecar says nothing more (times of the clock given with it). */
export interface ReaperLease {
  /** SIGTERM to every listed group from then on. */
  readonly termAtMs: number;
  /** SIGKILL from then on (also the latest SIGKILL once the sidecar is gone). */
  readonly killAtMs: number;
}

/** What the reaper did by itself (the sidecar was frozen): reported when the sidecar reads the channel again. */
export interface ReaperSignal {
  readonly pgid: number;
  readonly signal: 'SIGTERM' | 'SIGKILL';
  /** How late after the lease's time the signal went (the reaper's own scheduling delay). */
  readonly lateMs: number;
}

export interface ReaperOptions {
  /** Time between SIGTERM and SIGKILL once the sidecar is gone (bounded by the lease's kill time). */
  readonly drainTimeoutMs: number;
  /** The same when no lease was ever sent. */
  readonly fallbackGraceMs: number;
  readonly onError: (error: unknown) => void;
  readonly onSignal: (s: ReaperSignal) => void;
}

/** The read end of a piped child stream: Node's handle, passed over the IPC channel as a file descriptor. */
export interface OutputHandle {
  readonly fd: 1 | 2;
  readonly handle: unknown;
}

interface Listed {
  /** The read ends still open (asked again when a new reaper must be told). */
  readonly outputs: () => readonly OutputHandle[];
  readonly prefix: string;
}

export class Reaper {
  readonly #o: ReaperOptions;
  readonly #groups = new Map<number, Listed>();
  #lease: { readonly lease: ReaperLease; readonly clock: { now(): number } } | undefined;
  #proc: ChildProcess | undefined;
  #closed = false;

  constructor(o: ReaperOptions) {
    this.#o = o;
    this.#spawn();
  }

  /** The reaper's pid (for tests). */
  get pid(): number | undefined {
    return this.#proc?.pid;
  }

  /**
   * The times after which the children must be stopped unless a newer lease comes, in `clock`'s terms (the store's
   * clock); sent to the reaper on the host's monotonic clock, which it reads too.
   */
  setLease(lease: ReaperLease, clock: { now(): number }): void {
    this.#lease = { lease, clock };
    this.#sendLease();
  }

  /**
   * A child's process group started: stop it if the sidecar dies or its lease runs out. `outputs`: the read ends of
   * its piped stdout/stderr, which the reaper holds (and reads once the sidecar is gone), each line prefixed. Resolves
   * once the reaper has been sent everything (until then a kill -9 of this process would leave the child unknown
   * to it).
   */
  add(pgid: number, outputs: () => readonly OutputHandle[], prefix: string): Promise<void> {
    const listed: Listed = { outputs, prefix };
    this.#groups.set(pgid, listed);
    return this.#tell(pgid, listed);
  }

  /** The sidecar is stopping this group itself (SIGTERM sent): the reaper sends no SIGTERM, only SIGKILL by the lease. */
  stopping(pgid: number): void {
    if (this.#groups.has(pgid)) this.#control({ op: 'stopping', pgid });
  }

  /** A child's process group is empty (never call this before: its id could be reused). */
  remove(pgid: number): void {
    if (this.#groups.delete(pgid)) this.#control({ op: 'remove', pgid });
  }

  /** The sidecar ends normally: close the pipe and the channel (the reaper exits, stopping anything still listed). */
  close(): void {
    this.#closed = true;
    const proc = this.#proc;
    proc?.stdin?.end();
    if (proc?.connected === true) proc.disconnect();
  }

  /**
   * The group at once (a line on the reaper's stdin: in the kernel's buffer as soon as written, so a kill -9 of this
   * process right after loses nothing), then its pipes over the channel; resolves once they are on their way too.
   */
  #tell(pgid: number, listed: Listed): Promise<void> {
    this.#control({ op: 'add', pgid });
    const sent = listed
      .outputs()
      .map((o) => this.#send({ op: 'output', pgid, fd: o.fd, prefix: listed.prefix }, o.handle));
    return Promise.all(sent).then(() => undefined);
  }

  /** A control message: one JSON line on the reaper's stdin (never queued behind a file descriptor's transfer). */
  #control(message: object): void {
    const stdin = this.#proc?.stdin;
    if (stdin === undefined || stdin === null || stdin.destroyed) return;
    stdin.write(`${JSON.stringify(message)}\n`);
  }

  #sendLease(): void {
    if (this.#lease === undefined) return;
    const { lease: l, clock } = this.#lease;
    // The host's monotonic clock first, then the lease's: the times sent can only be early, never late (a pause
    // between the two readings, or in the channel, makes the reaper act sooner, not later).
    const hostNowMs = Number(process.hrtime.bigint()) / 1e6;
    const nowMs = clock.now();
    this.#control({
      op: 'lease',
      termAtMs: hostNowMs + (l.termAtMs - nowMs),
      killAtMs: hostNowMs + (l.killAtMs - nowMs),
    });
  }

  /**
   * Resolves once written to the channel (a message with a file descriptor waits for the reaper to acknowledge the
   * one before), or at once if the channel is closed (a new reaper is told everything by 'exit').
   */
  #send(message: object, handle?: unknown): Promise<void> {
    const proc = this.#proc;
    if (proc?.connected !== true) return Promise.resolve();
    return new Promise((resolve) => {
      try {
        // A raw pipe handle is sent as a file descriptor (Node's 'net.Native'); keepOpen: we go on reading it.
        proc.send(message, handle as undefined, { keepOpen: true }, () => resolve());
      } catch {
        resolve(); // the channel closed meanwhile: handled by 'exit'
      }
    });
  }

  #spawn(): void {
    const env = { ...process.env };
    delete env['NODE_OPTIONS']; // the reaper needs nothing (no loader, no preloaded module)
    const proc = spawn(
      process.execPath,
      ['-e', PROGRAM, String(this.#o.drainTimeoutMs), String(this.#o.fallbackGraceMs)],
      {
        detached: true, // its own process group and session: a terminal's Ctrl-C/Ctrl-Z or a group kill does not reach it
        stdio: ['pipe', 'inherit', 'inherit', 'ipc'],
        env,
      },
    );
    this.#proc = proc;
    proc.unref();
    proc.channel?.unref();
    proc.stdin?.on('error', () => undefined); // EPIPE if it died: handled by 'exit'
    proc.on('error', (error) => this.#o.onError(error));
    proc.on('message', (m: unknown) => {
      const s = m as Partial<ReaperSignal> & { op?: string };
      if (s.op === 'signalled' && typeof s.pgid === 'number' && (s.signal === 'SIGTERM' || s.signal === 'SIGKILL')) {
        this.#o.onSignal({ pgid: s.pgid, signal: s.signal, lateMs: Number(s.lateMs) });
      }
    });
    proc.on('exit', (code, signal) => {
      if (this.#closed || this.#proc !== proc) return;
      // Somebody killed it: start another one and tell it what is running.
      this.#o.onError(new Error(`the reaper process exited (code ${code}, signal ${signal}); restarting it`));
      this.#spawn();
      this.#sendLease();
      for (const [pgid, listed] of this.#groups) void this.#tell(pgid, listed);
    });
  }
}
