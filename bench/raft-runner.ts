/**
 * How `npm run bench -- raft` drives a target's load. A client-server target (etcd) runs it in a forked worker
 * process (LoadWorker, bench/raft-worker.ts), so that the measuring process never competes with the client; an
 * embedded library (Rebalancer) runs it inside its own node processes (bench/raft-targets.ts).
 */
import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { LoadResult } from './raft-load.js';
import type {
  FailoverRequest,
  FailoverResult,
  ParentMessage,
  RunRequest,
  WorkerInit,
  WorkerMessage,
} from './raft-protocol.js';

/** Runs the closed-loop load and the failover probe against one started target. */
export interface LoadRunner {
  /** Where the client side of the load runs, for the report (one line). */
  readonly where: string;
  /** The closed-loop load (bench/raft-load.ts): the merged figures of the whole run. */
  run(req: RunRequest): Promise<LoadResult>;
  /** Get the failover probe ready: one put must succeed within callTimeoutMs. */
  arm(callTimeoutMs: number): Promise<void>;
  /** Probe (bench/raft-probe.ts) until a put succeeds again after the kill. */
  failover(req: FailoverRequest): Promise<FailoverResult>;
  close(): Promise<void>;
}

/** Beyond a run's own duration: time for the worker to answer before it is declared stuck. */
export const WORKER_SLACK_MS = 60_000;
const WORKER_START_TIMEOUT_MS = 30_000;

type Reply<K extends string> = Extract<WorkerMessage, Record<K, unknown>>;

/** One forked bench/raft-worker.ts: requests one at a time, answered by id. */
export class LoadWorker implements LoadRunner {
  readonly where = 'a separate load worker process (the client library: etcd3, gRPC)';
  readonly #proc: ChildProcess;
  readonly #exited: Promise<void>;
  #nextId = 1;
  #waiting = new Map<number, (m: WorkerMessage) => void>();
  #onReady: ((m: WorkerMessage) => void) | undefined;
  #exitReason: string | undefined;

  constructor(readonly name: string) {
    this.#proc = fork(fileURLToPath(new URL('./raft-worker.ts', import.meta.url)), [], {
      execArgv: ['--import', 'tsx'],
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    this.#exited = new Promise((resolve) =>
      this.#proc.once('exit', (code, signal) => {
        this.#exitReason = `load worker of ${name} exited (${signal ?? `code ${code}`})`;
        const err = { error: this.#exitReason };
        this.#onReady?.(err);
        for (const w of this.#waiting.values()) w({ id: 0, ...err });
        this.#waiting.clear();
        resolve();
      }),
    );
    // Without a listener, a send() racing the worker's exit would throw from an 'error' event and end the bench.
    this.#proc.on('error', (err) => {
      this.#exitReason ??= `load worker of ${name}: ${err.message}`;
    });
    this.#proc.on('message', (m: WorkerMessage) => {
      if ('ready' in m || !('id' in m) || m.id === undefined) {
        this.#onReady?.(m);
        return;
      }
      const w = this.#waiting.get(m.id);
      this.#waiting.delete(m.id);
      w?.(m);
    });
  }

  /** Send the target's init; resolves once the worker opened its client. */
  async init(init: WorkerInit): Promise<void> {
    const answer = await this.#await<WorkerMessage>(WORKER_START_TIMEOUT_MS, 'start', (resolve) => {
      this.#onReady = resolve;
      this.#proc.send(init);
    });
    this.#onReady = undefined;
    if ('error' in answer) throw new Error(`${this.name} worker: ${answer.error}`);
  }

  async run(req: RunRequest): Promise<LoadResult> {
    return (await this.#request({ run: req }, req.warmupMs + req.durationMs + WORKER_SLACK_MS, 'result')).result;
  }

  async arm(callTimeoutMs: number): Promise<void> {
    await this.#request({ arm: { callTimeoutMs } }, callTimeoutMs + WORKER_SLACK_MS, 'armed');
  }

  async failover(req: FailoverRequest): Promise<FailoverResult> {
    return (await this.#request({ failover: req }, req.maxMs + WORKER_SLACK_MS, 'recovered')).recovered;
  }

  async close(): Promise<void> {
    if (this.#exitReason === undefined && this.#proc.connected) {
      const m: ParentMessage = { id: this.#nextId++, close: true };
      this.#proc.send(m);
    }
    const t = setTimeout(() => this.#proc.kill('SIGKILL'), 5000);
    await this.#exited;
    clearTimeout(t);
  }

  async #request<K extends 'result' | 'armed' | 'recovered'>(
    body: { run: RunRequest } | { arm: { callTimeoutMs: number } } | { failover: FailoverRequest },
    timeoutMs: number,
    expect: K,
  ): Promise<Reply<K>> {
    if (this.#exitReason !== undefined || !this.#proc.connected) {
      throw new Error(this.#exitReason ?? `load worker of ${this.name} is gone`);
    }
    const id = this.#nextId++;
    const answer = await this.#await<WorkerMessage>(timeoutMs, Object.keys(body)[0]!, (resolve) => {
      this.#waiting.set(id, resolve);
      this.#proc.send({ id, ...body } as ParentMessage);
    });
    if ('error' in answer) throw new Error(`${this.name}: ${answer.error}`);
    if (!(expect in answer)) throw new Error(`${this.name} worker: unexpected answer ${JSON.stringify(answer)}`);
    return answer as Reply<K>;
  }

  #await<T>(timeoutMs: number, what: string, start: (resolve: (m: T) => void) => void): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new Error(`${this.name} worker: no answer to ${what} within ${timeoutMs} ms`));
        // A stuck worker would keep loading the machine for the next measurements.
        this.#proc.kill('SIGKILL');
      }, timeoutMs);
      start((m) => {
        clearTimeout(timer);
        resolve(m);
      });
    });
  }
}
