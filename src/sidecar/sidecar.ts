/**
 * The language-agnostic sidecar (`rebalancer run`): a group member whose
 * handler, for each resource assigned to this node, runs a shell command as
 * a child process and stops it when the resource is revoked.
 *
 * The handler settles only once the child's whole process group is empty, so
 * the lock is released only after the child is gone: never two children for
 * one resource anywhere (as long as the sidecar itself is not paused; see
 * docs/sidecar.md). A child that exits by itself while the resource is still
 * assigned makes the handler settle (rejecting on a non-zero status), and the
 * member restarts it with its backoff, under the same lock and fencing token.
 */
import { hostname } from 'node:os';
import type { Writable } from 'node:stream';
import { ChildFailedError, RevokedError } from '../errors.js';

export { ChildFailedError };
import { OptionReader } from '../options.js';
import { PLACEMENT_STRATEGIES, type PlacementStrategy } from '../placement/index.js';
import { PROTOCOLS, type Protocol } from '../protocol/groups/keys.js';
import { NODE_ID_RE } from '../protocol/names.js';
import type { StopReason } from '../protocol/groups/member.js';
import { GroupMember, type GroupEvents } from '../runtime/groups/member.js';
import { TypedEmitter } from '../events.js';
import { resolveGroupOptions, type JoinGroupOptions, type ResourceContext } from '../runtime/groups/options.js';
import type { Store } from '../store/contract.js';
import { STORE_LIMITS } from '../store/validate.js';
import { SupervisedChild, type ChildExit, type StopOptions } from './child.js';
import { Reaper, type ReaperSignal } from './reaper.js';

/**
 * Deliberately broken variants, for showing that the sidecar's tests can fail
 * (`rebalancer run --mutant NAME`, a hidden option). Never for production.
 */
export const SIDECAR_MUTANTS = {
  'settle-before-exit':
    'the handler settles (so the lock is released) as soon as SIGTERM is sent, without waiting for the child to exit',
  'no-reaper': 'children are not registered with the reaper, so they outlive a kill -9 of the sidecar',
  'no-lease-deadline':
    'the reaper is not told the lease deadline, so the children of a frozen sidecar run on after its session expired',
} as const;
export type SidecarMutant = keyof typeof SIDECAR_MUTANTS;
export const SIDECAR_MUTANT_NAMES = Object.keys(SIDECAR_MUTANTS) as SidecarMutant[];

/**
 * The sidecar's options. Those it passes to its group member mean what they mean for `joinGroup` (JoinGroupOptions:
 * store, group, zone, weight, protocol, strategy, sessionTtlMs, restartBackoff — a restart is a child that exited
 * by itself while still assigned); ranges and defaults are in SIDECAR_RANGES.
 */
export interface SidecarOptions extends Pick<
  JoinGroupOptions,
  'store' | 'group' | 'protocol' | 'strategy' | 'sessionTtlMs' | 'restartBackoff'
> {
  /** Default: defaultNodeId() (host name and pid). */
  readonly nodeId?: string | undefined;
  readonly zone?: JoinGroupOptions['node']['zone'];
  readonly weight?: JoinGroupOptions['node']['weight'];
  /** Run through `/bin/sh -c` for each assigned resource. */
  readonly command: string;
  /** Time between SIGTERM and SIGKILL when a child is stopped, whole ms (not the member's drainTimeoutMs). */
  readonly drainTimeoutMs?: number | undefined;
  /** Prefix each line of a child's output with `[resource] ` (default true); false: pass it through untouched. */
  readonly prefixOutput?: boolean | undefined;
  readonly stdout?: Writable | undefined;
  readonly stderr?: Writable | undefined;
  /** The children's environment, before the REBALANCER_* variables are added (default process.env). */
  readonly env?: NodeJS.ProcessEnv | undefined;
  readonly mutant?: SidecarMutant | undefined;
}

export interface ChildInfo {
  readonly resource: string;
  readonly fencingToken: number;
  readonly pid: number;
}

export type ChildStopCause = StopReason | 'exited';

export type SidecarEvents = GroupEvents & {
  /** A child started; `pid` is also its process group id. */
  childStarted: ChildInfo;
  /** SIGTERM sent to the child's group: the resource was revoked (`reason`), or the shell exited and left processes behind. */
  childStopping: ChildInfo & { readonly reason: ChildStopCause; readonly graceMs: number };
  /** SIGKILL sent to the child's group (the grace period ran out, or the lease is about to end). */
  childKilled: ChildInfo & { readonly afterMs: number };
  /** The child's process group is empty. `cause`: stopped by us, or `exited` by itself. */
  childExited: ChildInfo &
    ChildExit & { readonly cause: ChildStopCause; readonly ranForMs: number; readonly restart: boolean };
  childFailedToStart: { readonly resource: string; readonly error: unknown };
  reaperError: { readonly error: unknown };
  /**
   * The reaper signalled a child by itself: the lease deadline passed with no word from this process (it was
   * frozen). Reported when this process runs again; `lateMs`: how late after its deadline the reaper acted.
   */
  reaperSignalled: ChildInfo & { readonly signal: 'SIGTERM' | 'SIGKILL'; readonly lateMs: number };
};

/**
 * Every event a Sidecar emits, and whose it is: the group member's (forwarded as they are) or the sidecar's own.
 * A Record, so that an event added to either cannot be left out here (nor in what `rebalancer run` prints).
 */
const EVENT_SOURCES: Record<keyof SidecarEvents, 'member' | 'sidecar'> = {
  joined: 'member',
  coordinatorElected: 'member',
  coordinatorLost: 'member',
  rebalanceStarted: 'member',
  rebalanceCompleted: 'member',
  assigned: 'member',
  revoked: 'member',
  released: 'member',
  fenced: 'member',
  unfenced: 'member',
  sessionLost: 'member',
  handlerFailed: 'member',
  handlerStuck: 'member',
  error: 'member',
  left: 'member',
  childStarted: 'sidecar',
  childStopping: 'sidecar',
  childKilled: 'sidecar',
  childExited: 'sidecar',
  childFailedToStart: 'sidecar',
  reaperError: 'sidecar',
  reaperSignalled: 'sidecar',
};

/** The names of every event a Sidecar emits. */
export const SIDECAR_EVENTS = Object.keys(EVENT_SOURCES) as (keyof SidecarEvents)[];
const MEMBER_EVENTS = SIDECAR_EVENTS.filter((e): e is keyof GroupEvents => EVENT_SOURCES[e] === 'member');

/** A node id from the host name and the pid, cut to the allowed characters. */
export function defaultNodeId(): string {
  const host =
    hostname()
      .replace(/[^A-Za-z0-9._:@-]/g, '-')
      .slice(0, 100) || 'host';
  return `${host}-${process.pid}`;
}

/**
 * Ranges and defaults of the sidecar's numbers: one table for the library (its option reader) and for
 * `rebalancer run` (its flags are parsed against the same bounds). The library takes whole milliseconds for the
 * TTL and the drain timeout, any number of milliseconds for the restart delays (as the group member does); the
 * command line takes whole numbers only.
 */
export const SIDECAR_RANGES = {
  sessionTtlMs: { min: STORE_LIMITS.minSessionTtlMs, max: STORE_LIMITS.maxSessionTtlMs, fallback: 10_000 },
  drainTimeoutMs: { min: 1, max: 3_600_000, fallback: 10_000 },
  restartInitialMs: { min: 1, max: 86_400_000, fallback: 1_000 },
  restartMaxMs: { min: 1, max: 86_400_000, fallback: 30_000 },
  /** Above the minimum, not at it: a node of weight 0 would take nothing. */
  weight: { min: 0, aboveMin: true, max: 1_000_000, fallback: 1 },
} as const;

/**
 * Checks of the sidecar's string options, shared by the library's option reader and `rebalancer run` (which
 * reports them under its flag names): each returns what is wrong, or undefined.
 */
export const SIDECAR_CHECKS = {
  command: (v: unknown): string | undefined => {
    if (typeof v !== 'string' || v.trim() === '') {
      return 'must be a non-empty shell command (run through /bin/sh -c), e.g. "./consume.sh"';
    }
    return v.includes('\0') ? 'must not contain a NUL character' : undefined;
  },
  nodeId: (v: unknown): string | undefined => {
    const rule = '1-128 characters of A-Z a-z 0-9 . _ : @ -';
    if (typeof v !== 'string') return `must be a string of ${rule}`;
    return NODE_ID_RE.test(v) ? undefined : `${JSON.stringify(v)} is invalid: use ${rule}`;
  },
};

/** The options, checked (InvalidArgumentError naming the option) and with their defaults. */
interface SidecarConfig {
  readonly store: Store;
  readonly group: string;
  readonly nodeId: string;
  readonly zone: string | undefined;
  readonly weight: number;
  readonly command: string;
  readonly sessionTtlMs: number;
  readonly drainTimeoutMs: number;
  readonly protocol: Protocol;
  readonly strategy: PlacementStrategy | undefined;
  readonly restartInitialMs: number;
  readonly restartMaxMs: number;
  readonly prefixOutput: boolean;
  readonly stdout: Writable;
  readonly stderr: Writable;
  readonly env: NodeJS.ProcessEnv | undefined;
  readonly mutant: SidecarMutant | undefined;
}

/**
 * Read the options with the one option reader: a misspelt option is refused with the closest name, a value of the
 * wrong type or out of range is refused with what is allowed. What the group member checks itself (the group name,
 * the zone's length) is left to it, so that each rule lives in one place.
 */
function readOptions(options: SidecarOptions): SidecarConfig {
  const r = new OptionReader(options, 'sidecar options');
  const R = SIDECAR_RANGES;
  const config: SidecarConfig = {
    store: r.required<Store>('store', (v) =>
      typeof v === 'object' && v !== null && typeof (v as Partial<Store>).txn === 'function'
        ? undefined
        : 'must be a Store (see openStore(url) or a backend module)',
    ),
    group: r.required<string>('group', (v) => (typeof v === 'string' ? undefined : 'must be a string')),
    nodeId: r.has('nodeId') ? r.required<string>('nodeId', SIDECAR_CHECKS.nodeId) : defaultNodeId(),
    zone: r.string('zone', undefined),
    weight: r.has('weight')
      ? r.required<number>('weight', (v) =>
          typeof v === 'number' && v > R.weight.min && v <= R.weight.max
            ? undefined
            : `must be a number above ${R.weight.min} and at most ${R.weight.max}, got ${String(v)}`,
        )
      : R.weight.fallback,
    command: r.required<string>('command', SIDECAR_CHECKS.command),
    sessionTtlMs: r.integer('sessionTtlMs', R.sessionTtlMs.fallback, R.sessionTtlMs),
    drainTimeoutMs: r.integer('drainTimeoutMs', R.drainTimeoutMs.fallback, R.drainTimeoutMs),
    protocol: r.oneOf('protocol', PROTOCOLS, 'resource-barrier'),
    strategy: r.has('strategy') ? r.oneOf('strategy', PLACEMENT_STRATEGIES, 'sticky-balanced') : undefined,
    ...readBackoff(r.object('restartBackoff')),
    prefixOutput: r.boolean('prefixOutput', true),
    stdout: r.has('stdout') ? r.required<Writable>('stdout', writable) : process.stdout,
    stderr: r.has('stderr') ? r.required<Writable>('stderr', writable) : process.stderr,
    env: r.has('env')
      ? r.required<NodeJS.ProcessEnv>('env', (v) =>
          typeof v === 'object' && v !== null && !Array.isArray(v)
            ? undefined
            : 'must be an object of variables (like process.env)',
        )
      : undefined,
    // Read only when set (no mutant is the default), so oneOf's fallback is never used.
    mutant: r.has('mutant') ? r.oneOf('mutant', SIDECAR_MUTANT_NAMES, SIDECAR_MUTANT_NAMES[0]!) : undefined,
  };
  r.done();
  return config;
}

/** `restartBackoff`: any number of milliseconds, as the group member takes it (the command line takes whole ones). */
function readBackoff(r: OptionReader | undefined): { restartInitialMs: number; restartMaxMs: number } {
  const { restartInitialMs: initial, restartMaxMs: max } = SIDECAR_RANGES;
  if (r === undefined) return { restartInitialMs: initial.fallback, restartMaxMs: max.fallback };
  const backoff = {
    restartInitialMs: r.ms('initialMs', initial.fallback, initial),
    restartMaxMs: r.ms('maxMs', max.fallback, max),
  };
  r.done();
  return backoff;
}

function writable(v: unknown): string | undefined {
  return typeof v === 'object' && v !== null && typeof (v as Partial<Writable>).write === 'function'
    ? undefined
    : 'must be a writable stream';
}

export class Sidecar extends TypedEmitter<SidecarEvents> {
  readonly member: GroupMember;
  readonly #o: SidecarConfig;
  readonly #marginMs: number;
  readonly #reaper: Reaper;
  readonly #children = new Map<string, { child: SupervisedChild; info: ChildInfo }>();
  /** Process groups the reaper signalled by itself (the lease ran out while this process was frozen). */
  readonly #reaped = new Set<number>();
  /** The lease deadline last sent to the reaper, and the timer that watches it. */
  #leaseSentMs = Number.NEGATIVE_INFINITY;
  #leaseTimer: ReturnType<typeof setInterval> | undefined;
  #stopping: Promise<void> | undefined;

  /** Validates the options (throws InvalidArgumentError); `start()` joins the group. */
  constructor(options: SidecarOptions) {
    super();
    const o = readOptions(options);
    this.#o = o;
    // Children are stopped this long before the session could expire; they get half of it between SIGTERM and
    // SIGKILL when the lease is in danger (see #killNow).
    this.#marginMs = Math.floor(o.sessionTtlMs / 5);
    this.member = new GroupMember(
      resolveGroupOptions({
        store: o.store,
        group: o.group,
        node: { id: o.nodeId, zone: o.zone, weight: o.weight },
        handler: (ctx: ResourceContext) => this.#run(ctx),
        protocol: o.protocol,
        strategy: o.strategy,
        sessionTtlMs: o.sessionTtlMs,
        selfFenceMarginMs: this.#marginMs,
        // A child that outlives SIGKILL by 2 s is reported stuck (its lock stays held while the session lives).
        drainTimeoutMs: o.drainTimeoutMs + 2000,
        restartBackoff: { initialMs: o.restartInitialMs, maxMs: o.restartMaxMs },
      }),
    );
    for (const e of MEMBER_EVENTS) this.member.on(e, (payload) => this.emit(e, payload as never));
    // Once the sidecar is gone, its children get the drain timeout, but are SIGKILLed by the lease's kill time (see
    // #sendLease); if no lease was ever sent, by the self-fencing margin: the session may expire soon after.
    this.#reaper = new Reaper({
      drainTimeoutMs: o.drainTimeoutMs,
      fallbackGraceMs: Math.min(o.drainTimeoutMs, this.#marginMs),
      onError: (error) => this.emit('reaperError', { error }),
      onSignal: (s) => this.#onReaperSignal(s),
    });
  }

  /** Join the group; children start as resources are assigned. */
  async start(): Promise<void> {
    try {
      await this.member.start();
    } catch (err) {
      this.#reaper.close();
      throw err;
    }
    // The reaper's view of the lease lags by at most this (it acts that much after this process would: #sendLease).
    this.#leaseTimer = setInterval(() => this.#sendLease(false), this.#leasePeriodMs());
    this.#leaseTimer.unref();
  }

  get nodeId(): string {
    return this.member.nodeId;
  }

  /** The children running now. */
  children(): ChildInfo[] {
    return [...this.#children.values()].map((c) => c.info);
  }

  /** Leave the group gracefully: every child is stopped (SIGTERM, grace, SIGKILL) and its lock released. */
  stop(): Promise<void> {
    this.#stopping ??= (async () => {
      try {
        await this.member.leave();
      } finally {
        clearInterval(this.#leaseTimer);
        this.#reaper.close();
      }
    })();
    return this.#stopping;
  }

  /** Forced shutdown: SIGKILL every child's group now (their locks expire with the session). */
  kill(): void {
    for (const { child } of this.#children.values()) child.kill();
  }

  /**
   * Tell the reaper when to stop the children by itself if it hears nothing newer: what this process does itself
   * when the lease runs out (SIGTERM at the lease deadline, SIGKILL at the latest half the self-fencing margin
   * later, see #killNow), one period of the lease timer later — the longest a renewal may take to reach the reaper,
   * and what lets this process's own stop come first when it runs. So the reaper's SIGKILL lands 3/8 of the margin
   * (TTL × 0.075) before the session's safety deadline, before the session can expire on the server and another
   * node start the resource. Sent when the deadline moves (a renewal, a new session), and before a child is
   * registered.
   */
  #sendLease(force: boolean): void {
    if (this.#o.mutant === 'no-lease-deadline') return; // BROKEN on purpose: the reaper does not know the deadline
    const deadlineMs = this.member.leaseDeadlineMs;
    if (!Number.isFinite(deadlineMs) || (!force && deadlineMs === this.#leaseSentMs)) return;
    this.#leaseSentMs = deadlineMs;
    const lagMs = this.#leasePeriodMs();
    const termAtMs = deadlineMs + lagMs;
    const killAtMs = Math.min(termAtMs + this.#o.drainTimeoutMs, deadlineMs + this.#marginMs / 2 + lagMs);
    this.#reaper.setLease({ termAtMs, killAtMs }, this.#o.store.clock);
  }

  /** How often the lease deadline is compared with what the reaper was told: an eighth of the margin (TTL/40). */
  #leasePeriodMs(): number {
    return this.#marginMs / 8;
  }

  #onReaperSignal(s: ReaperSignal): void {
    this.#reaped.add(s.pgid);
    const found = [...this.#children.values()].find((c) => c.info.pid === s.pgid);
    if (found === undefined) return; // gone meanwhile
    this.emit('reaperSignalled', { ...found.info, signal: s.signal, lateMs: s.lateMs });
  }

  /** SIGKILL before the grace period is over: the session could expire before it ends. */
  #killNow(): boolean {
    return this.member.leaseDeadlineMs + this.#marginMs / 2 <= this.#o.store.clock.now();
  }

  async #run(ctx: ResourceContext): Promise<void> {
    const { resource, fencingToken } = ctx;
    const startedMs = performance.now();
    let child: SupervisedChild;
    try {
      child = await SupervisedChild.start({
        command: this.#o.command,
        env: {
          ...(this.#o.env ?? process.env),
          REBALANCER_RESOURCE: resource,
          REBALANCER_FENCING_TOKEN: String(fencingToken),
          REBALANCER_GROUP: ctx.group,
          REBALANCER_NODE: ctx.nodeId,
        },
        prefix: this.#o.prefixOutput ? `[${resource}] ` : undefined,
        stdout: this.#o.stdout,
        stderr: this.#o.stderr,
      });
    } catch (error) {
      this.emit('childFailedToStart', { resource, error });
      throw error;
    }
    const info: ChildInfo = { resource, fencingToken, pid: child.pid };
    this.#children.set(resource, { child, info });
    const aborted = new Promise<'aborted'>((resolve) => {
      if (ctx.signal.aborted) resolve('aborted');
      else ctx.signal.addEventListener('abort', () => resolve('aborted'), { once: true });
    });
    if (this.#o.mutant !== 'no-reaper') {
      this.#sendLease(true);
      // The reaper hears of the group now (a line in its pipe's kernel buffer), and only then does the command run.
      const told = this.#reaper.add(child.pid, () => child.outputHandles(), `[${resource}] `);
      child.release();
      // childStarted says the reaper knows the child (its group and its pipes), unless that takes more than a
      // second (a stalled reaper) or the resource is revoked meanwhile.
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([told, aborted, new Promise((r) => (timer = setTimeout(r, 1000)))]);
      clearTimeout(timer);
    } else {
      child.release();
    }
    this.emit('childStarted', info);
    const stopOptions = (cause: ChildStopCause): StopOptions => {
      this.emit('childStopping', { ...info, reason: cause, graceMs: this.#o.drainTimeoutMs });
      this.#reaper.stopping(child.pid);
      const t0 = performance.now();
      return {
        graceMs: this.#o.drainTimeoutMs,
        killNow: () => this.#killNow(),
        onKill: () => this.emit('childKilled', { ...info, afterMs: Math.round(performance.now() - t0) }),
      };
    };
    const finish = (exit: ChildExit, cause: ChildStopCause): void => {
      this.#reaper.remove(child.pid);
      this.#reaped.delete(child.pid);
      if (this.#children.get(resource)?.child === child) this.#children.delete(resource);
      this.emit('childExited', {
        ...info,
        ...exit,
        cause,
        ranForMs: Math.round(performance.now() - startedMs),
        restart: cause === 'exited' && !ctx.signal.aborted,
      });
    };

    const first = await Promise.race([child.mainExited.then(() => 'exited' as const), aborted]);
    if (first === 'aborted') {
      const reason =
        ctx.signal.reason instanceof RevokedError ? (ctx.signal.reason as RevokedError<StopReason>).reason : 'revoked';
      const stopping = child.stop(stopOptions(reason)).then((exit) => finish(exit, reason));
      if (this.#o.mutant === 'settle-before-exit') return; // BROKEN on purpose: the lock is released now
      await stopping;
      return;
    }
    const exit = await child.waitExit(() => stopOptions('exited'));
    // Stopped by the reaper while this process was frozen, or exited once the lease had run out anyway: the
    // resource is lost as after a self-fence; the member stops, then rejoins or resumes (no failure, no restart).
    if (this.#reaped.has(child.pid) || (!ctx.signal.aborted && !ctx.stillOwner())) {
      finish(exit, 'fenced');
      return;
    }
    finish(exit, 'exited');
    // Still assigned: settle so that the member restarts the child after its backoff (same lock, same token).
    if (exit.code !== 0) throw new ChildFailedError(resource, exit.code, exit.signal);
  }
}
