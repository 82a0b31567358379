/**
 * A simulated node's view of time: the world's virtual clock, which keeps
 * running while the node is paused (like CLOCK_MONOTONIC under SIGSTOP), but
 * whose timers do not fire until the node resumes — then the overdue ones
 * fire in order, as Node runs expired timers after a pause. A crashed node's
 * timers never fire again.
 */
import type { Clock, TimerHandle, TimerOptions } from '../store/contract.js';

interface NodeTimer extends TimerHandle {
  readonly __timer: number;
}

export class NodeClock implements Clock {
  readonly #base: Clock;
  #seq = 0;
  readonly #timers = new Map<number, TimerHandle>();
  #queued: { id: number; fn: () => void }[] = [];
  #paused = false;
  #dead = false;

  constructor(base: Clock) {
    this.#base = base;
  }

  get paused(): boolean {
    return this.#paused;
  }

  get dead(): boolean {
    return this.#dead;
  }

  now(): number {
    return this.#base.now();
  }

  setTimeout(fn: () => void, delayMs: number, options?: TimerOptions): TimerHandle {
    const id = ++this.#seq;
    if (this.#dead) return { __timer: id } satisfies NodeTimer;
    const h = this.#base.setTimeout(
      () => {
        this.#timers.delete(id);
        if (this.#dead) return;
        if (this.#paused) this.#queued.push({ id, fn });
        else fn();
      },
      delayMs,
      options,
    );
    this.#timers.set(id, h);
    return { __timer: id } satisfies NodeTimer;
  }

  clearTimeout(handle: TimerHandle): void {
    const id = (handle as NodeTimer).__timer;
    const h = this.#timers.get(id);
    if (h !== undefined) this.#base.clearTimeout(h);
    this.#timers.delete(id);
    this.#queued = this.#queued.filter((q) => q.id !== id);
  }

  pause(): void {
    this.#paused = true;
  }

  /** Resume: overdue timers fire now, in order, each in its own turn. */
  resume(): void {
    this.#paused = false;
    const q = this.#queued;
    this.#queued = [];
    for (const t of q) {
      const h = this.#base.setTimeout(() => {
        this.#timers.delete(t.id);
        if (!this.#dead) t.fn();
      }, 0);
      this.#timers.set(t.id, h);
    }
  }

  /** The process died: nothing of it runs again. */
  kill(): void {
    this.#dead = true;
    for (const h of this.#timers.values()) this.#base.clearTimeout(h);
    this.#timers.clear();
    this.#queued = [];
  }
}
