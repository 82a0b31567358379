/**
 * The bench's handle on one Rebalancer node process (bench/raft-node.ts): fork, requests by id, kill -9, stop.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { NodeInit, NodeReply, NodeRequest } from './raft-node-protocol.js';
import { processCpuMs } from './raft-cpu.js';

const START_TIMEOUT_MS = 60_000;
const STOP_TIMEOUT_MS = 10_000;
/**
 * Extra node flags for profiling: `REBALANCER_BENCH_NODE_CPU_PROF=<dir>` writes a V8 CPU profile of each node
 * process into <dir> when it stops gracefully (not when it is killed).
 */
const CPU_PROF_ENV = 'REBALANCER_BENCH_NODE_CPU_PROF';

type Body =
  | { run: Extract<NodeRequest, { run: unknown }>['run'] }
  | { arm: { callTimeoutMs: number } }
  | { failover: Extract<NodeRequest, { failover: unknown }>['failover'] }
  | { status: true }
  | { stop: true };

export type Reply<K extends string> = Extract<NodeReply, Record<K, unknown>>;

export class NodeProcess {
  readonly init: NodeInit;
  readonly #proc: ChildProcess;
  readonly #exited: Promise<void>;
  #nextId = 1;
  readonly #waiting = new Map<number, (m: NodeReply) => void>();
  #onReady: ((m: NodeReply) => void) | undefined;
  #exitReason: string | undefined;

  private constructor(init: NodeInit) {
    this.init = init;
    const prof = process.env[CPU_PROF_ENV];
    this.#proc = fork(fileURLToPath(new URL('./raft-node.ts', import.meta.url)), [], {
      execArgv: ['--import', 'tsx', ...(prof ? ['--cpu-prof', `--cpu-prof-dir=${prof}`] : [])],
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    this.#exited = new Promise((resolve) =>
      this.#proc.once('exit', (code, signal) => {
        this.#exitReason = `raft node ${init.id} exited (${signal ?? `code ${code}`})`;
        const err = { error: this.#exitReason };
        this.#onReady?.(err);
        for (const w of this.#waiting.values()) w(err as NodeReply);
        this.#waiting.clear();
        resolve();
      }),
    );
    // Without a listener, a send() racing the process's exit would throw from an 'error' event.
    this.#proc.on('error', (err) => {
      this.#exitReason ??= `raft node ${init.id}: ${err.message}`;
    });
    this.#proc.on('message', (m: NodeReply) => {
      if (!('id' in m) || m.id === undefined) {
        this.#onReady?.(m);
        return;
      }
      const w = this.#waiting.get(m.id);
      this.#waiting.delete(m.id);
      w?.(m);
    });
  }

  /** Fork the node and send its init; resolves once it listens and has opened its groups. */
  static async start(init: NodeInit): Promise<NodeProcess> {
    const p = new NodeProcess(init);
    const answer = await p.#await(START_TIMEOUT_MS, 'start', (resolve) => {
      p.#onReady = resolve;
      p.#proc.send(init);
    });
    p.#onReady = undefined;
    if ('error' in answer) {
      await p.kill();
      throw new Error(`raft node ${init.id}: ${answer.error}`);
    }
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

  async request<K extends 'part' | 'armed' | 'recovered' | 'status' | 'stopped'>(
    body: Body,
    timeoutMs: number,
    expect: K,
  ): Promise<Reply<K>> {
    if (!this.alive || !this.#proc.connected) throw new Error(this.#exitReason ?? `raft node ${this.init.id} is gone`);
    const id = this.#nextId++;
    const answer = await this.#await(timeoutMs, Object.keys(body)[0]!, (resolve) => {
      this.#waiting.set(id, resolve);
      this.#proc.send({ id, ...body } as NodeRequest);
    });
    if ('error' in answer) throw new Error(`raft node ${this.init.id}: ${answer.error}`);
    if (!(expect in answer)) throw new Error(`raft node ${this.init.id}: unexpected answer ${JSON.stringify(answer)}`);
    return answer as Reply<K>;
  }

  /** kill -9; resolves once the process is gone. */
  async kill(): Promise<void> {
    if (this.alive) this.#proc.kill('SIGKILL');
    await this.#exited;
  }

  /** Close the node gracefully (its log and transport), then kill -9 if it does not exit in time. */
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

  #await(timeoutMs: number, what: string, start: (resolve: (m: NodeReply) => void) => void): Promise<NodeReply> {
    return new Promise<NodeReply>((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new Error(`raft node ${this.init.id}: no answer to ${what} within ${timeoutMs} ms`));
      }, timeoutMs);
      start((m) => {
        clearTimeout(timer);
        resolve(m);
      });
    });
  }
}
