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
import { InvalidArgumentError } from '../errors.js';
import type { PlacementStrategy } from '../placement/index.js';
import { type Protocol } from '../protocol/groups/keys.js';
import { NODE_ID_RE } from '../protocol/names.js';
import type { StopReason } from '../protocol/groups/member.js';
import { RevokedError } from '../errors.js';
import { GroupMember, type GroupEvents } from '../runtime/groups/member.js';
import { TypedEmitter } from '../runtime/events.js';
import { resolveGroupOptions, type ResourceContext } from '../runtime/groups/options.js';
import type { Store } from '../store/contract.js';
import { STORE_LIMITS } from '../store/validate.js';
import { SupervisedChild, type ChildExit, type StopOptions } from './child.js';
import { Reaper } from './reaper.js';

/**
 * Deliberately broken variants, for showing that the sidecar's tests can fail
 * (`rebalancer run --mutant NAME`, a hidden option). Never for production.
 */
export const SIDECAR_MUTANTS = {
  'settle-before-exit':
    'the handler settles (so the lock is released) as soon as SIGTERM is sent, without waiting for the child to exit',
  'no-reaper': 'children are not registered with the reaper, so they outlive a kill -9 of the sidecar',
} as const;
export type SidecarMutant = keyof typeof SIDECAR_MUTANTS;

export function isSidecarMutant(name: string): name is SidecarMutant {
  return Object.prototype.hasOwnProperty.call(SIDECAR_MUTANTS, name);
}

export interface SidecarOptions {
  readonly store: Store;
  readonly group: string;
  /** Default: defaultNodeId() (host name and pid). */
  readonly nodeId?: string | undefined;
  readonly zone?: string | undefined;
  readonly weight?: number | undefined;
  /** Run through `/bin/sh -c` for each assigned resource. */
  readonly command: string;
  /** Session TTL (default 10 000 ms). */
  readonly sessionTtlMs?: number | undefined;
  /** Time between SIGTERM and SIGKILL when a child is stopped (default 10 000 ms). */
  readonly drainTimeoutMs?: number | undefined;
  readonly protocol?: Protocol | undefined;
  readonly strategy?: PlacementStrategy | undefined;
  /** Restart backoff of a child that exits by itself while still assigned (default 1 000 → 30 000 ms). */
  readonly restartBackoff?:
    { readonly initialMs?: number | undefined; readonly maxMs?: number | undefined } | undefined;
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
};

/** A child that exited by itself with a non-zero status (reported as `handlerFailed`, then restarted). */
export class ChildFailedError extends Error {
  readonly resource: string;
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  constructor(resource: string, exit: ChildExit) {
    super(
      `the child of ${resource} exited by itself with ${exit.signal === null ? `code ${exit.code}` : `signal ${exit.signal}`}`,
    );
    this.name = 'ChildFailedError';
    this.resource = resource;
    this.code = exit.code;
    this.signal = exit.signal;
  }
}

const MEMBER_EVENTS: readonly (keyof GroupEvents)[] = [
  'joined',
  'coordinatorElected',
  'coordinatorLost',
  'rebalanceStarted',
  'rebalanceCompleted',
  'assigned',
  'revoked',
  'released',
  'fenced',
  'unfenced',
  'sessionLost',
  'handlerFailed',
  'handlerStuck',
  'error',
  'left',
];

/** A node id from the host name and the pid, cut to the allowed characters. */
export function defaultNodeId(): string {
  const host =
    hostname()
      .replace(/[^A-Za-z0-9._:@-]/g, '-')
      .slice(0, 100) || 'host';
  return `${host}-${process.pid}`;
}

function positiveMs(name: string, v: number | undefined, fallback: number, min: number, max: number): number {
  const x = v ?? fallback;
  if (typeof x !== 'number' || !Number.isInteger(x) || x < min || x > max) {
    throw new InvalidArgumentError(`${name} must be a whole number of milliseconds from ${min} to ${max}`);
  }
  return x;
}

export function validateCommand(command: unknown): string {
  if (typeof command !== 'string' || command.trim() === '') {
    throw new InvalidArgumentError('--exec must be a non-empty shell command, e.g. --exec "./consume.sh"');
  }
  if (command.includes('\0')) throw new InvalidArgumentError('--exec must not contain a NUL character');
  return command;
}

export class Sidecar extends TypedEmitter<SidecarEvents> {
  readonly member: GroupMember;
  readonly #o: SidecarOptions;
  readonly #command: string;
  readonly #drainMs: number;
  readonly #marginMs: number;
  readonly #reaper: Reaper;
  readonly #children = new Map<string, { child: SupervisedChild; info: ChildInfo }>();
  #stopping: Promise<void> | undefined;

  /** Validates the options (throws InvalidArgumentError); `start()` joins the group. */
  constructor(o: SidecarOptions) {
    super();
    this.#o = o;
    this.#command = validateCommand(o.command);
    const nodeId = o.nodeId ?? defaultNodeId();
    if (!NODE_ID_RE.test(nodeId)) {
      throw new InvalidArgumentError(
        `--node ${JSON.stringify(nodeId)} is invalid: use 1-128 characters of A-Z a-z 0-9 . _ : @ -`,
      );
    }
    const ttlMs = positiveMs(
      '--ttl-ms',
      o.sessionTtlMs,
      10_000,
      STORE_LIMITS.minSessionTtlMs,
      STORE_LIMITS.maxSessionTtlMs,
    );
    this.#drainMs = positiveMs('--drain-timeout-ms', o.drainTimeoutMs, 10_000, 1, 3_600_000);
    // Children are stopped this long before the session could expire; they get half of it between SIGTERM and
    // SIGKILL when the lease is in danger (see #killNow).
    this.#marginMs = Math.floor(ttlMs / 5);
    this.member = new GroupMember(
      resolveGroupOptions({
        store: o.store,
        group: o.group,
        node: { id: nodeId, zone: o.zone, weight: o.weight },
        handler: (ctx: ResourceContext) => this.#run(ctx),
        protocol: o.protocol,
        strategy: o.strategy,
        sessionTtlMs: ttlMs,
        selfFenceMarginMs: this.#marginMs,
        // A child that outlives SIGKILL by 2 s is reported stuck (its lock stays held while the session lives).
        drainTimeoutMs: this.#drainMs + 2000,
        restartBackoff: o.restartBackoff,
      }),
    );
    for (const e of MEMBER_EVENTS) this.member.on(e, (payload) => this.emit(e, payload as never));
    // Once the sidecar is gone, its children get at most the self-fencing margin: its session may expire soon after.
    this.#reaper = new Reaper(Math.min(this.#drainMs, this.#marginMs), (error) => this.emit('reaperError', { error }));
  }

  /** Join the group; children start as resources are assigned. */
  async start(): Promise<void> {
    try {
      await this.member.start();
    } catch (err) {
      this.#reaper.close();
      throw err;
    }
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
        this.#reaper.close();
      }
    })();
    return this.#stopping;
  }

  /** Forced shutdown: SIGKILL every child's group now (their locks expire with the session). */
  kill(): void {
    for (const { child } of this.#children.values()) child.kill();
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
        command: this.#command,
        env: {
          ...(this.#o.env ?? process.env),
          REBALANCER_RESOURCE: resource,
          REBALANCER_FENCING_TOKEN: String(fencingToken),
          REBALANCER_GROUP: ctx.group,
          REBALANCER_NODE: ctx.nodeId,
        },
        prefix: this.#o.prefixOutput === false ? undefined : `[${resource}] `,
        stdout: this.#o.stdout ?? process.stdout,
        stderr: this.#o.stderr ?? process.stderr,
      });
    } catch (error) {
      this.emit('childFailedToStart', { resource, error });
      throw error;
    }
    const info: ChildInfo = { resource, fencingToken, pid: child.pid };
    this.#children.set(resource, { child, info });
    if (this.#o.mutant !== 'no-reaper') this.#reaper.add(child.pid);
    this.emit('childStarted', info);
    const stopOptions = (cause: ChildStopCause): StopOptions => {
      this.emit('childStopping', { ...info, reason: cause, graceMs: this.#drainMs });
      const t0 = performance.now();
      return {
        graceMs: this.#drainMs,
        killNow: () => this.#killNow(),
        onKill: () => this.emit('childKilled', { ...info, afterMs: Math.round(performance.now() - t0) }),
      };
    };
    const finish = (exit: ChildExit, cause: ChildStopCause): void => {
      this.#reaper.remove(child.pid);
      if (this.#children.get(resource)?.child === child) this.#children.delete(resource);
      this.emit('childExited', {
        ...info,
        ...exit,
        cause,
        ranForMs: Math.round(performance.now() - startedMs),
        restart: cause === 'exited' && !ctx.signal.aborted,
      });
    };

    const aborted = new Promise<'aborted'>((resolve) => {
      if (ctx.signal.aborted) resolve('aborted');
      else ctx.signal.addEventListener('abort', () => resolve('aborted'), { once: true });
    });
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
    finish(exit, 'exited');
    // Still assigned: settle so that the member restarts the child after its backoff (same lock, same token).
    if (exit.code !== 0) throw new ChildFailedError(resource, exit);
  }
}
