/**
 * What every `rebalancer` command shares: exit codes, the global options and
 * opening the store they name. Each command lives in commands/<name>.ts and
 * exports a `register(program)` function; main.ts wires them and reports an
 * error that ends a command (errors.ts); input.ts reads what users type.
 */
import type { Command } from 'commander';
import { openStore } from '../store/open.js';
import type { Store } from '../store/contract.js';

/**
 * Exit codes: 0 success · 1 the check failed (or something asked for was not there) ·
 * 2 bad usage or input · 69 store or broker unavailable · 70 internal error.
 * Which error code gets which: EXIT_BY_CODE in errors.ts.
 */
export const EXIT = { ok: 0, failed: 1, usage: 2, unavailable: 69, internal: 70 } as const;

export const DEFAULT_STORE_URL = 'sqlite:./rebalancer.db';

export interface GlobalOptions {
  readonly store: string;
  readonly namespace: string;
  readonly json?: boolean;
}

export function globalOptions(program: Command): GlobalOptions {
  return program.opts<GlobalOptions>();
}

/** Open the store named by --store, run `fn`, close it. */
export async function withStore<T>(
  program: Command,
  fn: (store: Store, opts: GlobalOptions) => Promise<T>,
): Promise<T> {
  const opts = globalOptions(program);
  const store = await openStore(opts.store, { namespace: opts.namespace });
  try {
    return await fn(store, opts);
  } finally {
    await store.close();
  }
}

export function round(ms: number): number {
  return Math.round(ms * 100) / 100;
}

/** Write one line to stdout. */
export function out(line: string): void {
  process.stdout.write(`${line}\n`);
}

/** Whether a closed stdout/stderr (EPIPE) ends the command quietly (main.ts); `run` turns it off. */
export const stdioClosed = { exit: true };
