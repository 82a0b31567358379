/**
 * How the CLI reports an error that ends a command: the exit code of every error code, the user's first line
 * (Rebalancer's sentence, never a driver's raw text: that is an indented `cause:` line), and with --json one JSON
 * object on stderr with the code and the retryable flag. The CLI runs as a user runs it (a child process): on a
 * SQLite file, and against an etcd URL where nothing listens (the etcd driver's gRPC text is the case in point).
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it, vi } from 'vitest';
import { EXIT } from '../../src/cli/context.js';
import { EXIT_BY_CODE, reportError } from '../../src/cli/errors.js';
import {
  InvariantError,
  NodeIdInUseError,
  RETRYABLE,
  StoreUnavailableError,
  type ErrorCode,
} from '../../src/errors.js';
import { cli, CLI, REPO } from './cli-process.js';

const dir = mkdtempSync(join(tmpdir(), 'rb-cli-errors-'));
const SQLITE = `sqlite:${join(dir, 'cli.db')}`;
/** Nothing listens on port 1: the driver's connection is refused at once. */
const NO_ETCD = 'etcd://127.0.0.1:1';
/** The start of a gRPC status text, e.g. `14 UNAVAILABLE: No connection established…`. */
const GRPC_STATUS = /^\d+ [A-Z_]+: /;
/** The same anywhere in a line. */
const GRPC_STATUS_IN = /\b\d+ [A-Z_]{4,}: /;
/**
 * Our sentence for an etcd nobody listens on: the refused connection, or — on a loaded box, where the client's
 * deadline can pass before the driver reports the refusal — the request timing out. Either says what to do.
 */
const NO_ETCD_SENTENCE =
  /^etcd at 127\.0\.0\.1:1 (.*; check that the server runs|did not answer within requestTimeoutMs; .*re-read before retrying)/;

afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('errors printed by the CLI', () => {
  it('store unavailable: exit 69, our sentence first, the driver text as an indented cause', async () => {
    const r = await cli(['--store', NO_ETCD, 'status', '--group', 'g']);
    expect(r.code).toBe(69);
    const lines = r.err.trimEnd().split('\n');
    // (Under load the driver may report a deadline instead of the refused connection: either is a gRPC status.)
    // The backend's own sentence names the server and says what to do (so no second hint is printed).
    expect(lines[0]!.replace(/^rebalancer: /, '')).toMatch(NO_ETCD_SENTENCE);
    expect(lines[0]).toMatch(/^rebalancer: /);
    expect(lines[0]).not.toMatch(GRPC_STATUS_IN);
    expect(lines.slice(1).every((l) => l.startsWith('  '))).toBe(true);
    // No second hint: "check that …" at most in our sentence (the timeout's sentence says to re-read instead).
    expect(lines.filter((l) => /check that/.test(l))).toHaveLength(/check that/.test(lines[0]!) ? 1 : 0);
    expect(lines.find((l) => l.startsWith('  cause: '))?.slice('  cause: '.length)).toMatch(GRPC_STATUS);
  }, 60_000);

  it('store unavailable with --json: one JSON object on stderr with code, retryable flag, exit code and cause', async () => {
    const r = await cli(['--json', '--store', NO_ETCD, 'status', '--group', 'g']);
    expect(r.code).toBe(69);
    expect(r.out).toBe('');
    expect(r.err.trimEnd().split('\n')).toHaveLength(1);
    expect(JSON.parse(r.err)).toEqual({
      error: {
        code: 'STORE_UNAVAILABLE',
        message: expect.stringMatching(NO_ETCD_SENTENCE),
        retryable: true,
        exitCode: 69,
        causes: [expect.stringMatching(GRPC_STATUS)],
      },
    });
    expect((JSON.parse(r.err) as { error: { message: string } }).error.message).not.toMatch(GRPC_STATUS_IN);
  }, 60_000);

  it('--json: not found (exit 1) and bad input (exit 2) as JSON too', async () => {
    const notFound = await cli(['--json', '--store', SQLITE, 'status', '--group', 'nobody']);
    expect(notFound.code).toBe(1);
    expect(JSON.parse(notFound.err)).toEqual({
      error: {
        code: 'NOT_FOUND',
        message: expect.stringMatching(/^group "nobody" has no members/),
        retryable: false,
        exitCode: 1,
      },
    });
    const bad = await cli(['--json', '--store', SQLITE, 'status', '--group', 'g', '--limit', '1e4']);
    expect(bad.code).toBe(2);
    expect(JSON.parse(bad.err)).toEqual({
      error: {
        code: 'INVALID_ARGUMENT',
        message: '--limit must be a whole number from 0 to 1000000 (decimal digits only), got "1e4"',
        retryable: false,
        exitCode: 2,
      },
    });
  }, 60_000);
});

describe('output into a closed pipe', () => {
  it('`rebalancer … | head`: exit 141 (as after SIGPIPE), quietly, at the first write nobody reads', async () => {
    const child = spawn(process.execPath, [...CLI, '--json', 'sim', '--scenario', 'groups', '--seeds', '40'], {
      cwd: REPO,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let err = '';
    child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
    // The reader goes away before the first line: the write that follows fails with EPIPE.
    child.stdout.destroy();
    const [code] = (await once(child, 'exit')) as [number | null];
    expect(err).not.toMatch(/EPIPE|Unhandled 'error' event/);
    expect(code).toBe(141);
  }, 60_000);
});

describe('exit codes (docs/cli.md)', () => {
  it('every error code has one: retryable ones 69, the call is wrong 2, failed 1, a bug of the CLI 70', async () => {
    const expected: Record<ErrorCode, number> = {
      INVALID_ARGUMENT: 2,
      LIMIT_EXCEEDED: 2,
      CONFLICT: 2,
      NOT_FOUND: 1,
      CORRUPT_DATA: 1,
      INCOMPATIBLE_SCHEMA: 1,
      DISK_FAILED: 1,
      STORE_UNAVAILABLE: 69,
      BROKER_UNAVAILABLE: 69,
      SESSION_EXPIRED: 69,
      STORE_RECOVERING: 69,
      CLOCK_RATE: 69,
      NOT_LEADER: 69,
      NO_QUORUM: 69,
      TIMEOUT: 69,
      STATE_MACHINE_FAILED: 1,
      PEER_UNAVAILABLE: 69,
      REMOTE_FAILED: 1,
      DATA_LOST: 1,
      UNAUTHENTICATED: 1,
      CLOSED: 70,
      REVOKED: 70,
      LISTENER_FAILED: 70,
      HANDLER_FAILED: 70,
      INVARIANT_VIOLATED: 70,
    };
    expect(EXIT_BY_CODE).toEqual(expected);
    // Exit 69 says "try again later": exactly the codes the library calls retryable.
    for (const code of Object.keys(RETRYABLE) as ErrorCode[]) {
      expect(EXIT_BY_CODE[code] === EXIT.unavailable, code).toBe(RETRYABLE[code]);
    }
  });
});

describe('reportError (src/cli/errors.ts)', () => {
  let written = '';
  const capture = (): void => {
    written = '';
    vi.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array) => {
      written += String(chunk);
      return true;
    });
  };
  afterEach(() => vi.restoreAllMocks());

  it("takes a backend's appended driver text out of the first line, keeping what follows it", async () => {
    capture();
    const driver = new Error('connect ECONNREFUSED 10.0.0.1:5432');
    const code = reportError(
      new StoreUnavailableError(`postgres: connect failed: ${driver.message}; check that the server is reachable`, {
        cause: driver,
      }),
      { json: false },
    );
    expect(code).toBe(69);
    expect(written.split('\n')[0]).toBe('rebalancer: postgres: connect failed; check that the server is reachable');
    expect(written).toContain('\n  cause: connect ECONNREFUSED 10.0.0.1:5432\n');
  });

  it('a message that does not embed its cause is printed whole; CONFLICT exits 2', async () => {
    capture();
    expect(reportError(new NodeIdInUseError('a', 'group g'), { json: false })).toBe(2);
    expect(written).toBe(
      'rebalancer: id a is already a live member of group g (another process is using it); give every process its own id\n',
    );
  });

  it('an error that is not ours is internal (70): our sentence first, then its stack; never its text first', async () => {
    capture();
    const escaped = new Error('14 UNAVAILABLE: No connection established', { cause: new Error('ECONNREFUSED') });
    expect(reportError(escaped, { json: false })).toBe(70);
    const lines = written.trimEnd().split('\n');
    expect(lines[0]).toBe('rebalancer: internal error (a bug: please report it with the lines below)');
    expect(lines[1]).toBe('  Error: 14 UNAVAILABLE: No connection established');
    expect(lines.at(-1)).toBe('  cause: ECONNREFUSED');
    capture();
    expect(reportError('a thrown string', { json: true })).toBe(70);
    expect(JSON.parse(written)).toEqual({
      error: {
        code: 'INTERNAL',
        message: 'internal error (a bug: please report it with the lines below)',
        retryable: false,
        exitCode: 70,
        causes: ['a thrown string'],
      },
    });
  });

  it('an invariant violation is internal (70), printed with its stack', async () => {
    capture();
    expect(reportError(new InvariantError('two owners'), { json: false })).toBe(70);
    expect(written).toMatch(
      /^rebalancer: invariant violated: two owners\. This is a bug; please report it\n {2}InvariantError: /,
    );
  });
});
