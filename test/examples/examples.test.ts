/**
 * Every code example in README.md and docs/ is a file under examples/, and every file under examples/ runs.
 *
 *  - Each TypeScript/JavaScript block in the Markdown is preceded by `<!-- example: examples/….ts -->` (or by
 *    `<!-- not an example: why -->`), and its lines appear, verbatim and in one piece, in that file: the docs show
 *    exactly what is type-checked (`npm run typecheck` includes examples/) and run here, so they cannot drift.
 *  - Examples import the package by its names (`rebalancer`, `rebalancer/groups`, …), as applications do;
 *    tsconfig.json maps each name of package.json "exports" to its source file, for tsc and for tsx.
 *  - Each example runs as a child process the way a user runs it (`tsx`, Node's default
 *    `--unhandled-rejections=throw`), in a temp dir of its own (so `sqlite:./rebalancer.db` is a fresh file),
 *    against a real store: SQLite, or the private Redis / PostgreSQL / RabbitMQ the harness starts for the
 *    examples about those. The test waits for the line that shows the example works, stops it the way an operator
 *    does (SIGTERM; one-shot examples end by themselves) and requires exit code 0 within a bound and nothing on
 *    stderr (no unhandled rejection, no warning, no error event but a store that was unavailable for a while).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { connect, type Channel, type ChannelModel } from 'amqplib';
import pg from 'pg';
import ts from 'typescript';
import { afterAll, describe, expect, it, type ExpectStatic } from 'vitest';
import { allocatePorts } from '../harness/ports.js';
import { releasePort } from '../harness/processes.js';
import { startPostgres, startRabbitmq, startRedis, type ServerHandle } from '../harness/servers.js';

/** Ports reserved for examples that listen (released after all). */
const portsToRelease: number[] = [];
afterAll(() => {
  for (const p of portsToRelease) releasePort(p);
});

const REPO = fileURLToPath(new URL('../..', import.meta.url));
const TSCONFIG = join(REPO, 'tsconfig.json');
/** tsx's loader by absolute URL: examples run in temp dirs, where `--import tsx` would not resolve. */
const TSX_LOADER = pathToFileURL(createRequire(import.meta.url).resolve('tsx')).href;
/** Bound for an example to print what shows it works (tsx compiling, servers busy with other tests: generous). */
const READY_BOUND_MS = 45_000;
/** Bound from SIGTERM (or from the start, for one-shot examples) to exit. */
const EXIT_BOUND_MS = 20_000;
const TEST_BOUND_MS = 90_000;

/** Markdown fences that hold code a user copies into a program; each needs a marker (see the file comment). */
const CODE_LANGS = new Set(['ts', 'typescript', 'js', 'javascript', 'mjs', 'cjs', 'tsx', 'jsx']);
/** Example files the Markdown shows that CI type-checks but cannot run, and why. */
const TYPECHECK_ONLY: Readonly<Record<string, string>> = {
  'examples/docs/backends/redis.ts': 'a TLS Redis at redis.example.com with a private CA',
  'examples/docs/backends/etcd.ts': 'etcd clusters at 10.0.0.x and a mutual-TLS cluster with its certificates',
  'examples/docs/backends/zookeeper.ts': 'a ZooKeeper ensemble at zk1…zk3',
};
/** Examples another test file runs. */
const RUN_ELSEWHERE: Readonly<Record<string, string>> = {
  'examples/slots-kv/site.ts': 'test/slots/kv-example.test.ts',
  'examples/fleet-kv/node.ts': 'test/examples/fleet-kv.test.ts',
};
/** Filled as the tests below are declared: every example file must be run by one of them. */
const RUN_HERE = new Set<string>();

// ---------------------------------------------------------------- servers, started when first needed

const started: Promise<ServerHandle>[] = [];
function lazily(start: () => Promise<ServerHandle>): () => Promise<ServerHandle> {
  let server: Promise<ServerHandle> | undefined;
  return () => {
    if (server === undefined) {
      server = start();
      started.push(server);
    }
    return server;
  };
}
const redis = lazily(() => startRedis());
const postgres = lazily(() => startPostgres());
const rabbitmq = lazily(() => startRabbitmq());

/** The RabbitMQ examples share queue names (orders-…): they run one at a time, each with fresh queues. */
let rabbitTurn: Promise<unknown> = Promise.resolve();
function oneAtATime<T>(fn: () => Promise<T>): Promise<T> {
  const run = rabbitTurn.then(fn, fn);
  rabbitTurn = run.catch(() => undefined);
  return run;
}

async function withBroker<T>(fn: (ch: Channel, url: string) => Promise<T>): Promise<T> {
  const url = (await rabbitmq()).url;
  const conn: ChannelModel = await connect(url);
  conn.on('error', () => undefined);
  try {
    return await fn(await conn.createChannel(), url);
  } finally {
    await conn.close().catch(() => undefined);
  }
}

async function freshQueues(ch: Channel, names: readonly string[]): Promise<void> {
  for (const q of names) {
    await ch.deleteQueue(q);
    await ch.assertQueue(q, { durable: true });
  }
}

const processes: Example[] = [];
const dirs: string[] = [];

afterAll(async () => {
  for (const p of processes) if (!p.exited) p.proc.kill('SIGKILL');
  await Promise.all(processes.map((p) => p.exit));
  await Promise.all(started.map(async (s) => (await s.catch(() => undefined))?.stop()));
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
}, 60_000);

// ---------------------------------------------------------------- one example process

interface ExitResult {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
}

/** Variables an outer shell may set that would change what an example does. */
const SCRUBBED_ENV = [
  'HOSTNAME',
  'NODE_ID',
  'REBALANCER_STORE',
  'AMQP_URL',
  'DATABASE_URL',
  'NODE_OPTIONS',
  'RAFT_PORT',
  'FLEET_SECRET',
];

class Example {
  readonly name: string;
  readonly proc: ChildProcess;
  readonly exit: Promise<ExitResult>;
  exited = false;
  readonly lines: string[] = [];
  stderr = '';
  readonly #waiters = new Set<() => void>();

  /** `file` relative to the repository; `cwd` defaults to a new temp dir. */
  constructor(file: string, opts: { env?: Record<string, string>; args?: readonly string[]; cwd?: string } = {}) {
    this.name = [file, ...(opts.args ?? [])].join(' ');
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !SCRUBBED_ENV.includes(k)));
    const cwd = opts.cwd ?? tempDir();
    // The flag is Node's default, given explicitly so that an inherited setting cannot weaken it.
    this.proc = spawn(
      process.execPath,
      ['--unhandled-rejections=throw', '--import', TSX_LOADER, join(REPO, file), ...(opts.args ?? [])],
      // tsx finds tsconfig.json (the `paths` that map the package's names to src/) from the cwd; from a temp dir
      // it must be told where it is.
      { cwd, env: { ...env, TSX_TSCONFIG_PATH: TSCONFIG, ...opts.env }, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let out = '';
    this.proc.stdout!.on('data', (chunk: Buffer) => {
      out += chunk.toString('utf8');
      const parts = out.split('\n');
      out = parts.pop()!;
      this.lines.push(...parts);
      this.#wake();
    });
    this.proc.stderr!.on('data', (chunk: Buffer) => (this.stderr += chunk.toString('utf8')));
    this.exit = new Promise((resolve) =>
      this.proc.once('exit', (code, signal) => {
        this.exited = true;
        this.#wake();
        resolve({ code, signal });
      }),
    );
    processes.push(this);
  }

  #wake(): void {
    for (const w of [...this.#waiters]) w();
  }

  /** What it printed, for failure messages. */
  get output(): string {
    return `--- ${this.name}: stdout ---\n${this.lines.join('\n')}\n--- stderr ---\n${this.stderr}`;
  }

  /** Resolve with the first line (printed so far or later) that matches; fail if it exits or the bound passes. */
  waitFor(pattern: RegExp, boundMs = READY_BOUND_MS): Promise<string> {
    return new Promise((resolve, reject) => {
      const check = (): void => {
        const line = this.lines.find((l) => pattern.test(l));
        if (line !== undefined) done(() => resolve(line));
        else if (this.exited) done(() => reject(new Error(`exited before printing ${pattern}\n${this.output}`)));
      };
      const timer = setTimeout(
        () => done(() => reject(new Error(`no line matching ${pattern} within ${boundMs} ms\n${this.output}`))),
        boundMs,
      );
      const done = (settle: () => void): void => {
        clearTimeout(timer);
        this.#waiters.delete(check);
        settle();
      };
      this.#waiters.add(check);
      check();
    });
  }

  /** Wait for it to exit by itself within the bound; SIGKILL it (and fail) if it does not. */
  async untilExit(boundMs = EXIT_BOUND_MS): Promise<ExitResult> {
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<'late'>((resolve) => (timer = setTimeout(() => resolve('late'), boundMs)));
    const r = await Promise.race([this.exit, late]);
    clearTimeout(timer);
    if (r === 'late') {
      this.proc.kill('SIGKILL');
      throw new Error(`still running ${boundMs} ms later (a handle left open?)\n${this.output}`);
    }
    return r;
  }

  /** SIGTERM, as an operator or an orchestrator stops it, then wait for it to exit. */
  async stop(): Promise<ExitResult> {
    this.proc.kill('SIGTERM');
    return this.untilExit();
  }
}

/**
 * What an example may print on stderr without failing: a store that stayed unavailable for a while, reported by
 * the example's error listener (one line each), e.g. SQLite locked for longer than the request timeout by a process
 * that a loaded 2-core machine did not schedule in time. The library retries; the example must still get where it
 * is going and exit cleanly. Likewise a fleet node refusing a connection from a node whose record it has not read
 * yet (`unknown node id`): the other one dials again, and is let in once the record is read.
 */
const TRANSIENT = /: StoreUnavailableError: |: PeerAuthError: .*\(unknown node id "[^"]+"\)/;

/** Exit code 0; on stderr no unhandled rejection, no warning, no error but a transient one. */
function expectClean(expect_: ExpectStatic, p: Example, r: ExitResult): void {
  expect_(r, p.output).toEqual({ code: 0, signal: null });
  expect_(p.stderr, p.output).not.toMatch(/Unhandled/i);
  const unexpected = p.stderr.split('\n').filter((line) => line !== '' && !TRANSIENT.test(line));
  expect_(unexpected, p.output).toEqual([]);
}

function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'rebalancer-example-'));
  dirs.push(d);
  return d;
}

/** Declare a test that runs `files` (registered, so that the coverage check below knows they are run). */
function runs(files: readonly string[], name: string, fn: (expect_: ExpectStatic) => Promise<void>): void {
  for (const f of files) RUN_HERE.add(f);
  it(name, ({ expect: expect_ }) => fn(expect_), TEST_BOUND_MS);
}

// ---------------------------------------------------------------- the Markdown ↔ examples check

interface Block {
  readonly doc: string;
  /** 1-based line of the opening fence. */
  readonly line: number;
  readonly lang: string;
  readonly lines: readonly string[];
  /** The marker comment just above the fence, if any. */
  readonly marker: string | undefined;
}

function markdownFiles(): string[] {
  const out = ['README.md'];
  const walk = (dir: string): void => {
    for (const name of readdirSync(join(REPO, dir)).sort()) {
      const rel = `${dir}/${name}`;
      if (statSync(join(REPO, rel)).isDirectory()) walk(rel);
      else if (name.endsWith('.md')) out.push(rel);
    }
  };
  walk('docs');
  return out;
}

function codeBlocks(doc: string): Block[] {
  const text = readFileSync(join(REPO, doc), 'utf8').split('\n');
  const blocks: Block[] = [];
  for (let i = 0; i < text.length; i++) {
    const open = /^( *)(`{3,}|~{3,})\s*([\w+-]*)/.exec(text[i]!);
    if (open === null) continue;
    const [, indent, fence, lang] = open as unknown as [string, string, string, string];
    const lines: string[] = [];
    let j = i + 1;
    const close = new RegExp(`^ *${fence[0]}{${fence.length},}\\s*$`);
    for (; j < text.length && !close.test(text[j]!); j++) lines.push(text[j]!.slice(indent.length));
    let k = i - 1;
    while (k >= 0 && text[k]!.trim() === '') k--;
    const marker = k >= 0 && /^\s*<!--.*-->\s*$/.test(text[k]!) ? text[k]!.trim() : undefined;
    blocks.push({ doc, line: i + 1, lang: lang.toLowerCase(), lines, marker });
    i = j;
  }
  return blocks;
}

/** Where `block` starts in `file` (0-based line), or undefined; `near` is the longest partial match, for errors. */
function findIn(file: readonly string[], block: readonly string[]): { at: number | undefined; near: string } {
  let best = { length: -1, at: 0 };
  for (let i = 0; i < file.length; i++) {
    let n = 0;
    while (n < block.length && file[i + n] === block[n]) n++;
    if (n === block.length) return { at: i, near: '' };
    if (n > best.length) best = { length: n, at: i };
  }
  const n = best.length;
  return {
    at: undefined,
    near:
      `the longest match is ${n} line(s) from file line ${best.at + 1}; then the block has\n  ${JSON.stringify(block[n])}\n` +
      `where the file has\n  ${JSON.stringify(file[best.at + n])}`,
  };
}

function examplesOnDisk(): string[] {
  const out: string[] = [];
  const walk = (dir: string): void => {
    for (const name of readdirSync(join(REPO, dir)).sort()) {
      const rel = `${dir}/${name}`;
      if (statSync(join(REPO, rel)).isDirectory()) walk(rel);
      else if (/\.(ts|mts|js|mjs)$/.test(name)) out.push(rel);
    }
  };
  walk('examples');
  return out;
}

describe('the docs show the examples', () => {
  it('every TypeScript/JavaScript block in README.md and docs/ is marked with an example file that contains it verbatim', () => {
    const problems: string[] = [];
    const shown = new Set<string>();
    for (const doc of markdownFiles()) {
      for (const b of codeBlocks(doc)) {
        const where = `${b.doc}:${b.line}`;
        const example = /^<!-- example: (\S+) -->$/.exec(b.marker ?? '')?.[1];
        if (example === undefined) {
          if (CODE_LANGS.has(b.lang) && !/^<!-- not an example: .+ -->$/.test(b.marker ?? '')) {
            problems.push(`${where}: a \`${b.lang}\` block needs <!-- example: examples/….ts --> above it`);
          }
          continue;
        }
        shown.add(example);
        let file: string[];
        try {
          file = readFileSync(join(REPO, example), 'utf8').split('\n');
        } catch {
          problems.push(`${where}: ${example} does not exist`);
          continue;
        }
        const found = findIn(file, b.lines);
        if (found.at === undefined) problems.push(`${where}: not found verbatim in ${example}: ${found.near}`);
      }
    }
    for (const f of examplesOnDisk()) {
      if (!(f in RUN_ELSEWHERE) && !(f in TYPECHECK_ONLY) && !RUN_HERE.has(f)) {
        problems.push(`${f} is run by no test (add it to test/examples/examples.test.ts)`);
      }
      if ((f.startsWith('examples/readme/') || f.startsWith('examples/docs/')) && !shown.has(f)) {
        problems.push(`${f} is shown by no Markdown block`);
      }
    }
    expect(problems).toEqual([]);
  });

  it('the package names resolve to the sources, for tsc (tsconfig paths) and for tsx', async () => {
    const pkg = JSON.parse(readFileSync(join(REPO, 'package.json'), 'utf8')) as {
      name: string;
      exports: Record<string, string | { import?: string }>;
    };
    const config = ts.readConfigFile(TSCONFIG, (p) => ts.sys.readFile(p));
    const paths = (config.config as { compilerOptions: { paths: Record<string, string[]> } }).compilerOptions.paths;
    const expected: Record<string, string[]> = {};
    for (const [sub, target] of Object.entries(pkg.exports)) {
      const js = typeof target === 'string' ? undefined : target.import;
      if (js === undefined) continue; // ./package.json
      expected[pkg.name + sub.slice(1)] = [js.replace(/^\.\/dist\//, './src/').replace(/\.js$/, '.ts')];
    }
    expect(paths).toEqual(expected);
    // Run from a temp dir as the examples are: Node's self-reference alone would load dist/.
    const probe = new Example('test/examples/resolve-probe.ts', { args: Object.keys(expected) });
    expectClean(expect, probe, await probe.untilExit());
    const resolved = Object.fromEntries(probe.lines.filter((l) => l !== '').map((l) => l.split(' ')));
    const wanted = Object.fromEntries(
      Object.entries(expected).map(([name, [src]]) => [name, pathToFileURL(join(REPO, src!)).href]),
    );
    expect(resolved).toEqual(wanted);
  });
});

// ---------------------------------------------------------------- the examples

describe.concurrent('examples run against real stores and shut down cleanly', () => {
  // On SQLite and on Redis: an open Redis store keeps the process alive, so this catches a shutdown without close().
  for (const [backend, storeUrl] of [
    ['SQLite', async () => undefined],
    ['Redis', async () => (await redis()).url],
  ] as const) {
    runs(['examples/readme/groups.ts'], `README, resource groups (${backend})`, async (expect_) => {
      const url = await storeUrl();
      const p = new Example('examples/readme/groups.ts', url === undefined ? {} : { env: { REBALANCER_STORE: url } });
      for (const q of ['queue-1', 'queue-2', 'queue-3']) await p.waitFor(new RegExp(`^running ${q} \\d+$`));
      expectClean(expect_, p, await p.stop());
      // leave() stopped the handlers before the process ended (a lone node hands its resources to nobody).
      expect_(
        p.lines.filter((l) => /^stopped queue-\d leaving$/.test(l)),
        p.output,
      ).toHaveLength(3);
    });
  }

  runs(
    ['examples/readme/slots.ts'],
    'README, slots: a second node joins, the first leaves (SQLite)',
    async (expect_) => {
      const cwd = tempDir();
      const a = new Example('examples/readme/slots.ts', { cwd });
      await a.waitFor(/^primary of 1024 slots, holding 1024$/);
      const b = new Example('examples/readme/slots.ts', { cwd, env: { NODE_ID: 'kv-2' } });
      await b.waitFor(/^primary of 512 slots, holding 1024$/); // R = 3 on two nodes: every slot on both
      expectClean(expect_, a, await a.stop());
      // kv-1 released every slot (release() resolved { released: true }) before it left: kv-2 holds them all.
      expect_(a.lines.at(-1), a.output).toBe('primary of 0 slots, holding 0');
      await b.waitFor(/^primary of 1024 slots, holding 1024$/);
      expectClean(expect_, b, await b.stop());
    },
  );

  runs(['examples/readme/raft.ts'], 'README, Raft groups: three nodes, a replicated counter', async (expect_) => {
    const cwd = tempDir();
    const ports = await allocatePorts(3);
    portsToRelease.push(...ports);
    const env = (id: string): Record<string, string> => ({
      NODE_ID: id,
      PORTS: ports.join(','),
      RAFT_SECRET: 'x'.repeat(32),
    });
    const nodes = ['n1', 'n2', 'n3'].map((id) => new Example('examples/readme/raft.ts', { cwd, env: env(id) }));
    // Three nodes each add 1 a second: every total is seen by one node, and totals reach 9 within a few seconds.
    for (const [i, n] of nodes.entries()) await n.waitFor(new RegExp(`^n${i + 1} added 1: total (9|[1-9]\\d+)$`));
    const results = await Promise.all(nodes.map((n) => n.stop()));
    nodes.forEach((n, i) => expectClean(expect_, n, results[i]!));
    const totals = nodes.flatMap((n) => n.lines.map((l) => /added 1: total (\d+)$/.exec(l)?.[1])).filter((t) => t);
    // Exactly once: no total is handed to two commands.
    expect_(new Set(totals).size, nodes.map((n) => n.output).join('\n')).toBe(totals.length);
  });

  runs(['examples/readme/fleet.ts'], 'README, Fleet: three nodes, three counters, two drains', async (expect_) => {
    const cwd = tempDir();
    const ports = await allocatePorts(3);
    portsToRelease.push(...ports);
    const nodes = ['n1', 'n2', 'n3'].map(
      (id, i) => new Example('examples/readme/fleet.ts', { cwd, env: { NODE_ID: id, RAFT_PORT: String(ports[i]) } }),
    );
    // Every node adds 1 to every counter each second, through whichever node holds the group's leader; with three
    // nodes, each holds a replica of every group (before one drains, so that every group has somewhere to go).
    for (const [i, n] of nodes.entries()) {
      for (const g of ['eu', 'us', 'asia']) {
        await n.waitFor(new RegExp(`^n${i + 1} added 1 to ${g}: total \\d+$`));
        await n.waitFor(new RegExp(`^n${i + 1} holds a replica of ${g}$`));
      }
    }
    // n1 and n2 drain (their replicas move to the others first); n3, the last, leaves at once.
    for (const n of nodes) {
      expectClean(expect_, n, await n.stop());
      expect_(n.lines.at(-1), n.output).toMatch(/^n\d left$/);
    }
    // Exactly once: no total of a counter is handed to two commands, whichever node sent them.
    for (const g of ['eu', 'us', 'asia']) {
      const pattern = new RegExp(`added 1 to ${g}: total (\\d+)$`);
      const totals = nodes.flatMap((n) => n.lines.map((l) => pattern.exec(l)?.[1])).filter((t) => t !== undefined);
      expect_(new Set(totals).size, nodes.map((n) => n.output).join('\n')).toBe(totals.length);
    }
  });

  runs(
    ['examples/docs/protocol/slots.ts'],
    'docs/protocol/slots.md: three nodes, minNodes 3 (SQLite)',
    async (expect_) => {
      const cwd = tempDir();
      const nodes = ['kv-1', 'kv-2', 'kv-3'].map(
        (id) => new Example('examples/docs/protocol/slots.ts', { cwd, env: { NODE_ID: id } }),
      );
      // 1024 primaries balanced over three nodes: 341 or 342 each.
      for (const n of nodes) await n.waitFor(/^primary of 34[12] slots, holding 1024$/);
      const results = await Promise.all(nodes.map((n) => n.stop()));
      nodes.forEach((n, i) => expectClean(expect_, n, results[i]!));
    },
  );

  runs(['examples/readme/store-contract.ts'], 'README, the store contract (Redis)', async (expect_) => {
    const p = new Example('examples/readme/store-contract.ts', { env: { REBALANCER_STORE: (await redis()).url } });
    expectClean(expect_, p, await p.untilExit());
    expect_(p.lines, p.output).toEqual([
      expect_.stringMatching(/^leader with fencing token \d+ wrote the assignment$/),
      'the stale leader was refused',
    ]);
  });

  runs(['examples/docs/backends/sqlite.ts'], 'docs/backends/sqlite.md (SQLite)', async (expect_) => {
    const p = new Example('examples/docs/backends/sqlite.ts');
    expectClean(expect_, p, await p.untilExit());
    expect_(p.lines[0], p.output).toMatch(/^sqlite: wrote at revision \d+, read back example\/hello=world$/);
  });

  runs(['examples/docs/backends/postgres.ts'], 'docs/backends/postgres.md (PostgreSQL)', async (expect_) => {
    const p = new Example('examples/docs/backends/postgres.ts', { env: { DATABASE_URL: (await postgres()).url } });
    expectClean(expect_, p, await p.untilExit());
    expect_(p.lines[0], p.output).toMatch(/^postgres: wrote at revision \d+, read back example\/hello=world$/);
  });

  const ORDERS = ['orders-0', 'orders-1', 'orders-2', 'orders-3'];

  runs(['examples/readme/rabbitmq.ts'], 'README, RabbitMQ consumer group (Redis, RabbitMQ)', (expect_) =>
    oneAtATime(() =>
      withBroker(async (ch, amqp) => {
        await freshQueues(ch, ORDERS);
        for (const [i, q] of ORDERS.entries()) ch.sendToQueue(q, Buffer.from(JSON.stringify({ order: i })));
        const p = new Example('examples/readme/rabbitmq.ts', {
          env: { REBALANCER_STORE: (await redis()).url, AMQP_URL: amqp },
        });
        for (const [i, q] of ORDERS.entries()) {
          await p.waitFor(new RegExp(`^applied ${q} \\{"order":${i}\\} fencing token \\d+$`));
        }
        expectClean(expect_, p, await p.stop());
      }),
    ),
  );

  runs(['examples/docs/rabbitmq.ts'], 'docs/rabbitmq.md: fenced updates (Redis, RabbitMQ, PostgreSQL)', (expect_) =>
    oneAtATime(() =>
      withBroker(async (ch, amqp) => {
        await freshQueues(ch, ORDERS);
        const databaseUrl = (await postgres()).url;
        const p = new Example('examples/docs/rabbitmq.ts', {
          env: { REBALANCER_STORE: (await redis()).url, AMQP_URL: amqp, DATABASE_URL: databaseUrl },
        });
        for (const q of ORDERS) await p.waitFor(new RegExp(`^consuming ${q} \\d+$`));
        for (const q of ORDERS) ch.sendToQueue(q, Buffer.from('2'));
        const db = new pg.Client({ connectionString: databaseUrl });
        await db.connect();
        try {
          // Every message applied once: the totals add up, each row written with a fencing token.
          const deadline = Date.now() + READY_BOUND_MS;
          let rows: { queue: string; n: string; fence: string }[] = [];
          while (Date.now() < deadline) {
            rows = (await db.query<{ queue: string; n: string; fence: string }>('SELECT * FROM totals ORDER BY queue'))
              .rows;
            if (rows.every((r) => r.n === '2')) break;
            await new Promise((r) => setTimeout(r, 100));
          }
          expect_(
            rows.map((r) => [r.queue, r.n, Number(r.fence) > 0]),
            p.output,
          ).toEqual(ORDERS.map((q) => [q, '2', true]));
        } finally {
          await db.end();
        }
        expectClean(expect_, p, await p.stop());
      }),
    ),
  );

  runs(
    ['examples/rabbitmq-consumer-group/producer.ts', 'examples/rabbitmq-consumer-group/consumer.ts'],
    'examples/rabbitmq-consumer-group: producer and a consumer (SQLite, RabbitMQ)',
    (expect_) =>
      oneAtATime(() =>
        withBroker(async (ch, amqp) => {
          const queues = Array.from({ length: 8 }, (_, i) => `orders-${i}`);
          for (const q of queues) await ch.deleteQueue(q);
          const producer = new Example('examples/rabbitmq-consumer-group/producer.ts', {
            args: ['--amqp', amqp, '--count', '3', '--rate', '50'],
          });
          expectClean(expect_, producer, await producer.untilExit());
          const consumer = new Example('examples/rabbitmq-consumer-group/consumer.ts', {
            args: ['--node', 'a', '--store', 'sqlite:./rebalancer-example.db', '--amqp', amqp],
          });
          for (const q of queues) await consumer.waitFor(new RegExp(`^${q} #\\d+: \\{"seq":2\\}$`));
          expectClean(expect_, consumer, await consumer.stop());
          for (const q of queues) await ch.deleteQueue(q);
        }),
      ),
  );

  runs(
    ['examples/single-active-consumer/consumer.ts'],
    'examples/single-active-consumer: the standby takes over when the active one leaves (SQLite, RabbitMQ)',
    (expect_) =>
      withBroker(async (ch, amqp) => {
        const queue = `sac-example-${process.pid}`;
        await ch.assertQueue(queue, { durable: false });
        const cwd = tempDir();
        const consumer = (node: string): Example =>
          new Example('examples/single-active-consumer/consumer.ts', {
            cwd,
            args: ['--node', node, '--store', 'sqlite:./rebalancer-example.db', '--amqp', amqp, '--queue', queue],
          });
        const a = consumer('a');
        await a.waitFor(/^\[a\] ACTIVE$/);
        const b = consumer('b');
        await b.waitFor(/^\[b\] standing by$/);
        expectClean(expect_, a, await a.stop());
        await b.waitFor(/^\[b\] ACTIVE$/);
        ch.sendToQueue(queue, Buffer.from('#1'));
        await b.waitFor(/^\[b\] consumed #1 \(fencing token \d+\)$/);
        expectClean(expect_, b, await b.stop());
        await ch.deleteQueue(queue);
      }),
  );

  runs(
    ['examples/single-active-consumer/demo.ts'],
    'examples/single-active-consumer/demo.ts: kill -9 the active consumer (SQLite, RabbitMQ)',
    (expect_) =>
      withBroker(async (_ch, amqp) => {
        // Its consumers are started with `--import tsx`, resolved from the cwd: run it from the repository.
        const p = new Example('examples/single-active-consumer/demo.ts', { cwd: REPO, args: ['--amqp', amqp] });
        expectClean(expect_, p, await p.untilExit(READY_BOUND_MS));
        expect_(p.lines.join('\n'), p.output).toMatch(/took over: first message \d+ ms after the kill/);
      }),
  );
});
