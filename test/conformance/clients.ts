/**
 * Client "processes" for the conformance suite: real child processes for
 * networked and file backends, in-process stand-ins for the memory backend.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { Store } from '../../src/store/contract.js';
import { createCommandHandler, type ClientCommand, type ClientReply } from './client-commands.js';

export interface ClientProcess {
  request(command: ClientCommand, timeoutMs?: number): Promise<ClientReply>;
  /** Freeze the client (SIGSTOP): no keep-alives, no progress. */
  pause(): void;
  resume(): void;
  /** SIGKILL: the client dies without telling the store. */
  kill(): void;
  /** Graceful shutdown. */
  close(): Promise<void>;
}

const CHILD = fileURLToPath(new URL('./child.ts', import.meta.url));

/** Spawn `child.ts` on `url` and wait for it to be ready. */
export async function spawnClient(url: string, namespace: string): Promise<ClientProcess> {
  const child: ChildProcess = spawn(process.execPath, ['--import', 'tsx', CHILD, url, namespace], {
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  const pending = new Map<number, (r: ClientReply) => void>();
  let seq = 0;
  let exited = false;
  const ready = new Promise<void>((resolve, reject) => {
    const rl = createInterface({ input: child.stdout! });
    rl.on('line', (line) => {
      let msg: { ready?: boolean; id?: number; reply?: ClientReply };
      try {
        msg = JSON.parse(line) as typeof msg;
      } catch {
        return; // a driver printed something; not ours
      }
      if (msg.ready === true) resolve();
      else if (msg.id !== undefined && msg.reply !== undefined) pending.get(msg.id)?.(msg.reply);
    });
    child.once('exit', (code, signal) => {
      exited = true;
      reject(new Error(`client exited before ready (code ${String(code)}, signal ${String(signal)})`));
      for (const p of pending.values()) p({ ok: false, code: 'EXITED', message: 'client process exited' });
    });
  });
  const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
  try {
    await ready;
  } finally {
    clearTimeout(timer);
  }
  return {
    request(command, timeoutMs = 30_000) {
      if (exited) return Promise.resolve({ ok: false, code: 'EXITED', message: 'client process exited' });
      const id = ++seq;
      return new Promise((resolve) => {
        const t = setTimeout(() => {
          pending.delete(id);
          resolve({ ok: false, code: 'TIMEOUT', message: `no reply to ${command.cmd} within ${timeoutMs} ms` });
        }, timeoutMs);
        pending.set(id, (r) => {
          clearTimeout(t);
          pending.delete(id);
          resolve(r);
        });
        child.stdin!.write(`${JSON.stringify({ id, command })}\n`);
      });
    },
    pause: () => void child.kill('SIGSTOP'),
    resume: () => void child.kill('SIGCONT'),
    kill: () => void child.kill('SIGKILL'),
    async close() {
      if (exited) return;
      child.kill('SIGCONT');
      const done = new Promise<void>((r) => child.once('exit', () => r()));
      child.stdin!.end();
      const t = setTimeout(() => child.kill('SIGKILL'), 5000);
      await done;
      clearTimeout(t);
    },
  };
}

/**
 * An in-process client whose pause is simulated: while paused, commands
 * queue and `onPause`/`onResume` cut the store off (memory backend faults).
 */
export function inProcessClient(
  store: Store,
  hooks: { onPause(): void; onResume(): void; onKill(): void },
): ClientProcess {
  const handle = createCommandHandler(store);
  let paused = false;
  let waiters: (() => void)[] = [];
  const gate = (): Promise<void> => (paused ? new Promise((r) => waiters.push(r)) : Promise.resolve());
  return {
    async request(command) {
      await gate();
      return handle(command);
    },
    pause() {
      paused = true;
      hooks.onPause();
    },
    resume() {
      paused = false;
      hooks.onResume();
      const w = waiters;
      waiters = [];
      for (const f of w) f();
    },
    kill() {
      hooks.onKill();
    },
    async close() {
      this.resume();
      await store.close();
    },
  };
}
