/**
 * The `rebalancer` command as a user runs it, for the CLI and sidecar tests: a child process started from the
 * sources (tsx, so no build is needed), in the repository.
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

export const REPO = fileURLToPath(new URL('../..', import.meta.url));

/** `node --import tsx src/cli/main.ts`: prefix the CLI's own arguments with these. */
export const CLI = ['--import', 'tsx', 'src/cli/main.ts'];

export interface CliResult {
  readonly code: number | null;
  readonly out: string;
  readonly err: string;
}

export interface CliOptions {
  /** Standard input. */
  readonly input?: string | undefined;
  /** Killed after this long (default 60 s): a command that should have been refused may start and never end. */
  readonly timeoutMs?: number | undefined;
  readonly env?: NodeJS.ProcessEnv | undefined;
}

/**
 * Run the CLI to its end, without blocking this process: a test worker blocked for long (several CLI runs in a
 * row on a loaded box) misses vitest's RPC deadline ("Timeout calling onTaskUpdate"), which fails the whole run.
 */
export function cli(args: readonly string[], o: CliOptions = {}): Promise<CliResult> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [...CLI, ...args], {
      cwd: REPO,
      stdio: [o.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
      env: o.env ?? process.env,
    });
    let out = '';
    let err = '';
    child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
    if (o.input !== undefined) child.stdin!.end(o.input);
    const timer = setTimeout(() => child.kill('SIGKILL'), o.timeoutMs ?? 60_000);
    child.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, out, err });
    });
  });
}

/** The same as cli() (kept for the tests that say they run several at once). */
export const cliAsync = cli;
