/**
 * Waiting in tests, written once: `sleep(ms)` and `eventually(check, { what, timeoutMs })`.
 *
 * Prefer `eventually` to a bare `sleep`: wait for the condition itself, within a bound, and say what did not happen
 * when it does not (a test ordered by sleeps is slow where it passes and flaky where it fails). Keep `sleep` for
 * what must take time: holding a process paused past a TTL, letting a stopped handler run into stale work.
 */

/** Resolves after `ms` milliseconds. */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export interface EventuallyOptions {
  /** What is awaited, for the timeout message: e.g. `'the session to expire'`. */
  readonly what: string;
  /** How long to keep trying. The check runs at least once, and once more at the deadline. */
  readonly timeoutMs: number;
  /** Pause between two tries (default 25 ms; use more when a try is costly, e.g. reads an oracle file). */
  readonly intervalMs?: number;
  /** State that explains a timeout, computed only then and appended to the message (e.g. who owns what now). */
  readonly context?: () => string;
}

/** Default pause between tries. */
export const EVENTUALLY_INTERVAL_MS = 25;

/**
 * Runs `check` until it passes, and returns what it returned. It passes when it returns (or resolves to) anything
 * but `false`, so it can be a predicate (`() => session.state === 'expired'`) or an assertion (`() => { expect(x)
 * .toBe(1); }`, or an async one). A check that throws or returns `false` has not passed yet: it is tried again after
 * `intervalMs`, until `timeoutMs` has passed.
 *
 * On timeout it throws an Error that says what was awaited, for how long, and the last failure (the error the check
 * last threw, also kept as `cause`, or that it returned false), then the `context`.
 */
export async function eventually<T>(
  check: () => T | Promise<T>,
  options: EventuallyOptions,
): Promise<Exclude<T, false>> {
  const { what, timeoutMs, intervalMs = EVENTUALLY_INTERVAL_MS, context } = options;
  if (!(timeoutMs >= 0) || !Number.isFinite(timeoutMs)) {
    throw new RangeError(`eventually(${what}): timeoutMs must be a finite number >= 0, got ${timeoutMs}`);
  }
  if (!(intervalMs > 0) || !Number.isFinite(intervalMs)) {
    throw new RangeError(`eventually(${what}): intervalMs must be a finite number > 0, got ${intervalMs}`);
  }
  const started = Date.now();
  const deadline = started + timeoutMs;
  let tries = 0;
  let lastError: unknown;
  let threw = false;
  for (;;) {
    tries++;
    try {
      const result = await check();
      if (result !== false) return result as Exclude<T, false>;
      threw = false;
    } catch (error) {
      threw = true;
      lastError = error;
    }
    const left = deadline - Date.now();
    if (left <= 0) break;
    await sleep(Math.min(intervalMs, left));
  }
  const last = threw ? `it threw ${describeError(lastError)}` : 'it returned false';
  let message =
    `timed out waiting for ${what}: not so after ${Date.now() - started} ms ` +
    `(bound ${timeoutMs} ms, ${tries} ${tries === 1 ? 'try' : 'tries'}); last try: ${last}`;
  if (context !== undefined) {
    try {
      message += `\n${context()}`;
    } catch (error) {
      message += `\n(context unavailable: ${describeError(error)})`;
    }
  }
  throw new Error(message, threw ? { cause: lastError } : undefined);
}

function describeError(error: unknown): string {
  if (error instanceof Error) return `${error.name}: ${error.message}`;
  return String(error);
}
