/**
 * Handler supervision for a group member: the resources this node deals with
 * and their handlers — start under a lock and a token, abort, wait for them to
 * settle, restart after a backoff, report stuck ones.
 *
 * The rules that keep ownership safe live in the core (decideMember): a
 * handler starts only after its lock was taken, and a lock is released only
 * once its handler has settled. This file carries them out and never releases
 * anything itself.
 */
import { invariant, RevokedError } from '../../errors.js';
import type { LocalResource, StopReason } from '../../protocol/groups/member.js';
import type { Mutants } from '../../protocol/mutants.js';
import type { Clock, Session } from '../../store/contract.js';
import type { ResourceContext, ResourceHandler } from './options.js';

export interface LocalEntry {
  state: LocalResource;
  controller: AbortController | undefined;
  /** Resolves once the running handler has settled (and its outcome was handled). */
  settled: Promise<void> | undefined;
  /** Consecutive failures (restart backoff); reset when a run lasts longer than the longest backoff. */
  failures: number;
  stuckReported: boolean;
}

export interface AssignedResource {
  readonly resource: string;
  readonly fencingToken: number | undefined;
  readonly phase: LocalResource['phase'];
}

export interface SupervisorConfig {
  readonly group: string;
  readonly nodeId: string;
  readonly clock: Clock;
  readonly random: () => number;
  readonly handler: ResourceHandler;
  readonly restartInitialMs: number;
  readonly restartMaxMs: number;
  readonly drainTimeoutMs: number;
  readonly onStuckHandler: 'wait' | 'exit';
  readonly mutants: Mutants;
  /** The node's current session and whether it may act now (lease check). */
  readonly session: () => Session | undefined;
  readonly ownsNow: () => boolean;
  /** Ask for a member round (a handler settled, a backoff ended). */
  readonly kick: () => void;
  readonly events: {
    assigned(resource: string, fencingToken: number): void;
    revoked(resource: string, reason: StopReason): void;
    handlerFailed(resource: string, error: unknown): void;
    handlerStuck(resource: string, stoppingForMs: number): void;
  };
}

export class HandlerSupervisor {
  readonly #c: SupervisorConfig;
  readonly #local = new Map<string, LocalEntry>();

  constructor(config: SupervisorConfig) {
    this.#c = config;
  }

  get size(): number {
    return this.#local.size;
  }

  get(resource: string): LocalEntry | undefined {
    return this.#local.get(resource);
  }

  has(resource: string): boolean {
    return this.#local.has(resource);
  }

  entries(): IterableIterator<[string, LocalEntry]> {
    return this.#local.entries();
  }

  delete(resource: string): void {
    const e = this.#local.get(resource);
    if (!this.#c.mutants.has('release-before-stop'))
      invariant(e === undefined || e.settled === undefined, () => `forgetting ${resource} while its handler runs`);
    this.#local.delete(resource);
  }

  /** Forget everything (after a session loss, once every handler has settled). */
  clear(): void {
    invariant(!this.busy(), 'forgetting resources whose handlers still run');
    this.#local.clear();
  }

  /** The local state of every resource, for the core. */
  states(): Map<string, LocalResource> {
    return new Map([...this.#local].map(([r, e]) => [r, e.state]));
  }

  /** True while any handler has not settled. */
  busy(): boolean {
    for (const e of this.#local.values()) if (e.settled !== undefined) return true;
    return false;
  }

  /** Resolves once every handler has settled (polled: handlers may be started meanwhile). */
  async whenSettled(pollMs: number, untilMs = Number.POSITIVE_INFINITY): Promise<void> {
    while (this.busy() && this.#c.clock.now() < untilMs) {
      await new Promise<void>((resolve) => this.#c.clock.setTimeout(resolve, pollMs));
    }
  }

  assignment(): AssignedResource[] {
    return [...this.#local]
      .map(([resource, e]) => ({
        resource,
        fencingToken: 'token' in e.state ? e.state.token : undefined,
        phase: e.state.phase,
      }))
      .sort((a, b) => (a.resource < b.resource ? -1 : 1));
  }

  newEntry(resource: string): LocalEntry {
    invariant(!this.#local.has(resource), () => `${resource} is already being dealt with`);
    const e: LocalEntry = {
      state: { phase: 'acquiring' },
      controller: undefined,
      settled: undefined,
      failures: 0,
      stuckReported: false,
    };
    this.#local.set(resource, e);
    return e;
  }

  /** Start the handler of `resource` under the lock with `token`, taken by `session`. */
  start(resource: string, e: LocalEntry, token: number, generation: number, session: Session): void {
    invariant(e.settled === undefined, () => `starting ${resource} while its previous handler runs`);
    invariant(Number.isSafeInteger(token) && token > 0, () => `starting ${resource} without a fencing token`);
    const controller = new AbortController();
    e.controller = controller;
    e.state = { phase: 'running', token, generation };
    e.stuckReported = false;
    const startedAtMs = this.#c.clock.now();
    const ctx: ResourceContext = {
      group: this.#c.group,
      nodeId: this.#c.nodeId,
      resource,
      fencingToken: token,
      signal: controller.signal,
      // Tied to the session the handler started under: a rejoin's new session does not make it an owner again.
      stillOwner: (): boolean => !controller.signal.aborted && this.#c.session() === session && this.#c.ownsNow(),
    };
    this.#c.events.assigned(resource, token);
    let run: Promise<void>;
    try {
      run = Promise.resolve(this.#c.handler(ctx));
    } catch (err) {
      run = Promise.reject(err instanceof Error ? err : new Error(String(err)));
    }
    e.settled = run.then(
      () => this.#onSettled(resource, e, controller, ctx, startedAtMs, undefined),
      (error: unknown) =>
        this.#onSettled(resource, e, controller, ctx, startedAtMs, error ?? new Error('handler rejected')),
    );
  }

  #onSettled(
    resource: string,
    e: LocalEntry,
    controller: AbortController,
    ctx: ResourceContext,
    startedAtMs: number,
    error: unknown,
  ): void {
    if (e.controller !== controller) return;
    e.settled = undefined;
    e.controller = undefined;
    const token = 'token' in e.state ? e.state.token : 0;
    const now = this.#c.clock.now();
    if (controller.signal.aborted || (error === undefined && !ctx.stillOwner())) {
      // Stopped on purpose — aborted, or it returned because stillOwner() turned false (the documented loop):
      // no failure. The next round releases the lock, or restarts the handler at once if the resource is still
      // ours once the lease is trusted again.
      e.state = { phase: 'stopped', token };
    } else {
      // Ended on its own while still ours: keep the lock, restart after a backoff. A run that lasted longer than
      // the longest backoff counts as healthy: the count starts again.
      if (error !== undefined) this.#c.events.handlerFailed(resource, error);
      if (now - startedAtMs >= this.#c.restartMaxMs) e.failures = 0;
      e.failures++;
      const base = Math.min(this.#c.restartMaxMs, this.#c.restartInitialMs * 2 ** Math.min(20, e.failures - 1));
      const delay = base * (0.5 + this.#c.random() / 2);
      const generation = 'generation' in e.state ? e.state.generation : 0;
      e.state = { phase: 'backoff', token, generation, restartAtMs: now + delay };
      this.#c.clock.setTimeout(() => this.#c.kick(), delay, { background: true });
    }
    this.#c.kick();
  }

  /** Abort the handler of `resource` (or end its backoff); its lock is released once it has settled. */
  stop(resource: string, reason: StopReason): void {
    const e = this.#local.get(resource);
    if (e === undefined) return;
    if (e.state.phase === 'backoff') {
      e.state = { phase: 'stopped', token: e.state.token };
      this.#c.events.revoked(resource, reason);
      this.#c.kick();
      return;
    }
    if (e.state.phase !== 'running') return;
    e.state = { phase: 'stopping', token: e.state.token, sinceMs: this.#c.clock.now() };
    this.#c.events.revoked(resource, reason);
    e.controller?.abort(new RevokedError<StopReason>(resource, reason));
    if (this.#c.mutants.has('release-before-stop')) e.state = { phase: 'stopped', token: e.state.token };
  }

  /** Abort every running handler at once (fenced, session lost, leaving); releases follow once they settle. */
  stopAll(reason: StopReason): void {
    for (const [resource, e] of this.#local) {
      if (e.state.phase === 'running' || e.state.phase === 'backoff') this.stop(resource, reason);
    }
  }

  /** Report handlers that take longer than the drain timeout to stop (and exit the process if so configured). */
  checkStuck(): void {
    const now = this.#c.clock.now();
    for (const [resource, e] of this.#local) {
      if (e.state.phase !== 'stopping') continue;
      const forMs = now - e.state.sinceMs;
      if (forMs < this.#c.drainTimeoutMs || e.stuckReported) continue;
      e.stuckReported = true;
      this.#c.events.handlerStuck(resource, forMs);
      if (this.#c.onStuckHandler === 'exit') {
        // The lock stays held by our session until the process is gone; the OS then ends the work.
        process.exitCode = 75;
        setImmediate(() => process.exit(75));
      }
    }
  }
}
