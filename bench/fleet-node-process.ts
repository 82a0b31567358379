/**
 * The fleet bench's handle on one fleet node process (bench/fleet-node.ts): fork, requests by id, kill -9, stop.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { FleetNodeInit, FleetNodeReply, FleetNodeRequest } from './fleet-protocol.js';
import { processCpuMs } from './raft-cpu.js';

const START_TIMEOUT_MS = 60_000;
const STOP_TIMEOUT_MS = 10_000;

/** A request without its id. */
type Body = FleetNodeRequest extends infer R ? (R extends { id: number } ? Omit<R, 'id'> : never) : never;
type Answer = 'added' | 'local' | 'part' | 'described' | 'deactivated' | 'stopped';
export type FleetReply<K extends Answer> = Extract<FleetNodeReply, Record<K, unknown>>;

export class FleetNodeProcess {
  readonly init: FleetNodeInit;
  /** When the process was forked and when it answered ready (performance.now()). */
  readonly forkedAtMs: number;
  readyAtMs = Number.NaN;
  readonly #proc: ChildProcess;
  readonly #exited: Promise<void>;
  #nextId = 1;
  readonly #waiting = new Map<number, (m: FleetNodeReply) => void>();
  #onReady: ((m: FleetNodeReply) => void) | undefined;
  #exitReason: string | undefined;

  private constructor(init: FleetNodeInit) {
    this.init = init;
    this.forkedAtMs = performance.now();
    this.#proc = fork(fileURLToPath(new URL('./fleet-node.ts', import.meta.url)), [], {
      execArgv: ['--import', 'tsx'],
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    this.#exited = new Promise((resolve) =>
      this.#proc.once('exit', (code, signal) => {
        this.#exitReason = `fleet node ${init.id} exited (${signal ?? `code ${code}`})`;
        const err = { error: this.#exitReason };
        this.#onReady?.(err);
        for (const w of this.#waiting.values()) w(err as FleetNodeReply);
        this.#waiting.clear();
        resolve();
      }),
    );
    // Without a listener, a send() racing the process's exit would throw from an 'error' event.
    this.#proc.on('error', (err) => {
      this.#exitReason ??= `fleet node ${init.id}: ${err.message}`;
    });
    this.#proc.on('message', (m: FleetNodeReply) => {
      if (!('id' in m) || m.id === undefined) {
        this.#onReady?.(m);
        return;
      }
      const w = this.#waiting.get(m.id);
      this.#waiting.delete(m.id);
      w?.(m);
    });
  }

  /** Fork the node and send its init; resolves once joinFleet resolved there (registered, serving). */
  static async start(init: FleetNodeInit): Promise<FleetNodeProcess> {
    const p = new FleetNodeProcess(init);
    let answer: FleetNodeReply;
    try {
      answer = await p.#await(START_TIMEOUT_MS, 'start', (resolve) => {
        p.#onReady = resolve;
        p.#proc.send(init);
      });
    } catch (err) {
      await p.kill();
      throw err;
    }
    p.#onReady = undefined;
    if ('error' in answer) {
      await p.kill();
      throw new Error(`fleet node ${init.id}: ${answer.error}`);
    }
    p.readyAtMs = performance.now();
    return p;
  }

  get pid(): number | undefined {
    return this.#proc.pid;
  }

  get alive(): boolean {
    return this.#exitReason === undefined;
  }

  /** CPU (user + system, ms) used so far by this process; undefined once it is gone. */
  cpuMs(): number | undefined {
    return this.alive && this.pid !== undefined ? processCpuMs(this.pid) : undefined;
  }

  async request<K extends Answer>(body: Body, timeoutMs: number, expect: K): Promise<FleetReply<K>> {
    if (!this.alive || !this.#proc.connected) throw new Error(this.#exitReason ?? `fleet node ${this.init.id} is gone`);
    const id = this.#nextId++;
    const answer = await this.#await(timeoutMs, Object.keys(body)[0]!, (resolve) => {
      this.#waiting.set(id, resolve);
      this.#proc.send({ id, ...body } as FleetNodeRequest);
    });
    if ('error' in answer) throw new Error(`fleet node ${this.init.id}: ${answer.error}`);
    if (!(expect in answer)) {
      throw new Error(`fleet node ${this.init.id}: unexpected answer ${JSON.stringify(answer).slice(0, 200)}`);
    }
    return answer as FleetReply<K>;
  }

  /** kill -9; resolves once the process is gone. */
  async kill(): Promise<void> {
    if (this.alive) this.#proc.kill('SIGKILL');
    await this.#exited;
  }

  /** Resolves once the process exited (after deactivate or stop). */
  exited(): Promise<void> {
    return this.#exited;
  }

  /** Close the node at once (no draining), then kill -9 if it does not exit in time. */
  async stop(): Promise<void> {
    if (!this.alive) return;
    const t = setTimeout(() => this.#proc.kill('SIGKILL'), STOP_TIMEOUT_MS);
    try {
      await this.request({ stop: true }, STOP_TIMEOUT_MS, 'stopped');
    } catch {
      // Gone already, or stuck: the timer kills it.
    }
    await this.#exited;
    clearTimeout(t);
  }

  #await(
    timeoutMs: number,
    what: string,
    start: (resolve: (m: FleetNodeReply) => void) => void,
  ): Promise<FleetNodeReply> {
    return new Promise<FleetNodeReply>((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new Error(`fleet node ${this.init.id}: no answer to ${what} within ${timeoutMs} ms`));
      }, timeoutMs);
      start((m) => {
        clearTimeout(timer);
        resolve(m);
      });
    });
  }
}
