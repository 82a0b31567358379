/**
 * How the CLI reports an error that ends a command: which exit code, and what
 * the user reads first.
 *
 * The first line is Rebalancer's own sentence (the error's message), never a
 * driver's raw text: backends wrap a driver's error with what they were doing
 * and append its text after a colon (`etcd check the layout version failed:
 * 14 UNAVAILABLE: No connection established…`); that text is moved to an
 * indented `cause:` line below. With --json the same goes to stderr as one
 * JSON object with the code, the retryable flag and the exit code.
 */
import { describe, RebalancerError, type ErrorCode } from '../errors.js';
import { EXIT } from './context.js';

type ExitCode = (typeof EXIT)[keyof typeof EXIT];

/**
 * The exit code of each error code (docs/cli.md, "Exit codes"). A Record, so that a new error code cannot be added
 * without deciding its exit code here.
 */
export const EXIT_BY_CODE: Readonly<Record<ErrorCode, ExitCode>> = {
  // The call is wrong: fix it.
  INVALID_ARGUMENT: EXIT.usage,
  LIMIT_EXCEEDED: EXIT.usage,
  // Another live process uses this node id: fix the invocation (give each process its own --node). Running the
  // same command again will not help while the other process lives, so not "unavailable"; and it is what exit 2
  // meant for it before it had its own code.
  CONFLICT: EXIT.usage,
  // What was asked for is not there, or the store holds data this build cannot use: the command failed.
  NOT_FOUND: EXIT.failed,
  CORRUPT_DATA: EXIT.failed,
  INCOMPATIBLE_SCHEMA: EXIT.failed,
  // A Raft node's disk refused a write or an fsync: retrying does not help until someone frees or replaces it.
  DISK_FAILED: EXIT.failed,
  // The store (or broker) did not answer: retrying later may help. A command's own session expires only when the
  // store did not answer its keep-alives.
  STORE_UNAVAILABLE: EXIT.unavailable,
  BROKER_UNAVAILABLE: EXIT.unavailable,
  SESSION_EXPIRED: EXIT.unavailable,
  STORE_RECOVERING: EXIT.unavailable,
  // The host's clock rate is out of the bound: the runtime waits by itself; a command may be tried again later.
  CLOCK_RATE: EXIT.unavailable,
  // A Raft group without a leader here, or a request that ran out of time: another replica, or later, may serve it.
  NOT_LEADER: EXIT.unavailable,
  NO_QUORUM: EXIT.unavailable,
  TIMEOUT: EXIT.unavailable,
  // Another raft node could not serve a request (no connection, dropped, no handler yet): another node, or later.
  PEER_UNAVAILABLE: EXIT.unavailable,
  // A Raft state machine that throws: retrying does not help until it is fixed.
  STATE_MACHINE_FAILED: EXIT.failed,
  // Another raft node's request handler threw: its message says why; the same request would fail the same way.
  REMOTE_FAILED: EXIT.failed,
  // The data is gone: retrying does not bring it back; the message says what to do.
  DATA_LOST: EXIT.failed,
  // A raft peer that did not authenticate: the configuration is wrong; retrying as is will not help.
  UNAUTHENTICATED: EXIT.failed,
  // None of these can reach the top of a command unless the CLI itself is wrong: a closed object used, an abort
  // reason or a listener's error escaping, an invariant broken.
  CLOSED: EXIT.internal,
  REVOKED: EXIT.internal,
  LISTENER_FAILED: EXIT.internal,
  // A handler's failure is reported as an event and the handler restarted; it never ends a command.
  HANDLER_FAILED: EXIT.internal,
  INVARIANT_VIOLATED: EXIT.internal,
};

export function exitCodeOf(err: unknown): ExitCode {
  return err instanceof RebalancerError ? EXIT_BY_CODE[err.code] : EXIT.internal;
}

/** What to do, where a message from deep down (a backend's) may not say it. */
const HINTS: Partial<Record<ErrorCode, string>> = {
  STORE_UNAVAILABLE: 'the store did not answer: check that it runs and that --store names it, then try again',
  SESSION_EXPIRED: 'the store did not answer in time: check that it runs and that --store names it, then try again',
  BROKER_UNAVAILABLE: 'the message broker did not answer: check that it runs and is reachable, then try again',
};

/** How deep a chain of causes is followed (a cause may have a cause). */
const MAX_CAUSES = 4;

/** Print `err` to stderr for a user (text) or a program (--json); returns the exit code. */
export function reportError(err: unknown, o: { json: boolean }): ExitCode {
  const code = exitCodeOf(err);
  let first: string;
  let causes: string[];
  let stack: string | undefined;
  if (err instanceof RebalancerError) {
    first = withoutCause(err);
    causes = causeChain(err.cause);
    // A bug of ours: the stack is what a report needs.
    stack = code === EXIT.internal ? err.stack : undefined;
  } else {
    // Not one of ours (a driver's error that escaped, a TypeError): a bug. Its text is not the first line.
    first = 'internal error (a bug: please report it with the lines below)';
    causes = err instanceof Error ? causeChain(err.cause) : causeChain(err);
    stack = err instanceof Error ? err.stack : undefined;
  }
  if (o.json) {
    const error = {
      code: err instanceof RebalancerError ? err.code : 'INTERNAL',
      message: first,
      retryable: err instanceof RebalancerError && err.retryable,
      exitCode: code,
      causes: causes.length === 0 ? undefined : causes,
      stack,
    };
    process.stderr.write(`${JSON.stringify({ error })}\n`);
    return code;
  }
  const lines = [`rebalancer: ${first}`];
  // Only where the message does not already say what to do (the backends' own messages mostly do).
  const hint = err instanceof RebalancerError && !/\bcheck\b/.test(err.message) ? HINTS[err.code] : undefined;
  if (hint !== undefined) lines.push(`  ${hint}`);
  if (stack !== undefined) lines.push(...stack.split('\n').map((l) => `  ${l.trim()}`));
  lines.push(...causes.map((c) => `  cause: ${c}`));
  process.stderr.write(`${lines.join('\n')}\n`);
  return code;
}

/** The error's message with its cause's text (appended by a backend after a colon) taken out. */
function withoutCause(err: RebalancerError): string {
  const text = err.cause === undefined ? '' : describe(err.cause).trim();
  if (text === '') return err.message;
  const at = err.message.indexOf(`: ${text}`);
  // Only the backends' "what failed: <driver text>" form: a cause mentioned in any other way is left alone.
  if (at < 0 || at === 0) return err.message;
  const rest = err.message.slice(at + 2 + text.length).trimStart();
  const head = err.message.slice(0, at);
  // What followed the driver's text ("; check that the server is reachable", "(…re-read before retrying)") stays.
  return rest === '' ? head : /^[;,.)]/.test(rest) ? `${head}${rest}` : `${head} ${rest}`;
}

/** The causes, outermost first, one line each (a RebalancerError's own cause text taken out of its line). */
function causeChain(cause: unknown): string[] {
  const out: string[] = [];
  for (let c = cause, depth = 0; c !== undefined && c !== null && depth < MAX_CAUSES; depth++) {
    const text = c instanceof RebalancerError ? withoutCause(c) : describe(c);
    out.push(text.replace(/\s+/g, ' ').trim());
    c = c instanceof Error ? c.cause : undefined;
  }
  return out;
}
