/**
 * The Raft simulation's clients (issue 13, item 5): each lives in one node's process (its requests run on that
 * node's clock: a paused node's client waits with it), issues put/append/cas/get through the node's RaftGroup, and
 * records every operation with the history recorder on the world's clock. When its node dies the operation in
 * flight keeps an unknown outcome and the client moves to another live node, as a client would reconnect.
 *
 * Outcomes as the node runtime reports them: a result → ok; TimeoutError → unknown (its `outcome` 'not-applied' →
 * failed: nothing was handed to a leader); NoQuorumError and NotLeaderError → failed (not applied).
 *
 * Key `log` only ever gets appends of unique values: the final state must hold every acknowledged one exactly once
 * (no acknowledged write lost, none applied twice), checked directly besides linearizability.
 */
import { NoQuorumError, NotLeaderError, TimeoutError } from '../errors.js';
import type { HistoryRecorder } from './linearizability.js';
import type { KvInput, KvOutput } from './linearizability-models.js';
import type { Incarnation, KvGroup, SimCluster, SimNode } from './raft-cluster.js';
import type { Random } from './random.js';
import type { SimWorld } from './world.js';

export const APPEND_ONLY_KEY = 'log';
const KEYS = ['x', 'y', APPEND_ONLY_KEY] as const;

export interface ClientStats {
  ok: number;
  unknown: number;
  failed: number;
  /** Errors of another type (traced). */
  other: number;
  /** Reads answered with consistency 'lease' (among `ok`). */
  leaseReads: number;
}

interface Client {
  readonly name: string;
  readonly home: number;
  seq: number;
  /** The last value this client saw per key (its cas expectations). */
  readonly seen: Map<string, string | null>;
}

export interface ClientsOptions {
  readonly world: SimWorld;
  readonly cluster: SimCluster;
  readonly history: HistoryRecorder<KvInput, KvOutput>;
  readonly random: Random;
  /** Issue some reads with consistency 'lease' (the group has leaseReads). */
  readonly leaseReads: boolean;
  readonly trace: (line: string) => void;
}

type Result = { ok: true; output: KvOutput } | { ok: false; error: unknown } | 'dead';

export class SimClients {
  readonly stats: ClientStats = { ok: 0, unknown: 0, failed: 0, other: 0, leaseReads: 0 };
  /** Every append value issued to APPEND_ONLY_KEY, and those acknowledged. */
  readonly appendsIssued = new Set<string>();
  readonly appendsAcked = new Set<string>();
  readonly #o: ClientsOptions;
  readonly #clients: Client[];
  /** The client of writeThenRead (its own name and sequence). */
  readonly #prober: Client = { name: 'probe', home: 0, seq: 0, seen: new Map() };

  constructor(o: ClientsOptions, count: number) {
    this.#o = o;
    this.#clients = Array.from({ length: count }, (_, i) => ({
      name: `c${i + 1}`,
      home: i % o.cluster.nodes.length,
      seq: 0,
      seen: new Map(),
    }));
  }

  /** Every client issues operations until `untilMs` (virtual); resolves when all stopped. */
  run(untilMs: number): Promise<void> {
    return Promise.all(this.#clients.map((c) => this.#loop(c, untilMs))).then(() => undefined);
  }

  /**
   * The liveness phase (everything healed): each client appends once and reads once on its home node, each of
   * which must succeed. Returns what failed.
   */
  async finalOps(timeoutMs: number): Promise<string[]> {
    const failures: string[] = [];
    await Promise.all(
      this.#clients.map(async (c) => {
        const n = this.#o.cluster.nodes[c.home]!;
        for (const input of [this.#append(c, APPEND_ONLY_KEY), { op: 'get', key: 'x' } as const]) {
          const r = await this.#issue(c, n, input, timeoutMs, 'linearizable');
          if (r === 'dead' || !r.ok) {
            failures.push(
              `${c.name} on ${n.id}: ${describe(input)} did not complete once healed: ${r === 'dead' ? 'node died' : errorText(r.error)}`,
            );
          }
        }
      }),
    );
    return failures;
  }

  /**
   * One client writes `x` through `writer`, then, once acknowledged, reads it through `reader` (both recorded): a
   * reader that serves from a leadership it lost returns the value before the write.
   */
  async writeThenRead(writer: SimNode, reader: SimNode): Promise<void> {
    const c = this.#prober;
    const w = await this.#issue(c, writer, { op: 'put', key: 'x', value: `${c.name}.${++c.seq}` }, 300, 'linearizable');
    if (w === 'dead' || !w.ok) return;
    // A moment later: operations at the same instant count as concurrent (the read could be ordered first).
    await new Promise<void>((resolve) => this.#o.world.clock.setTimeout(resolve, 0.01));
    await this.#issue(c, reader, { op: 'get', key: 'x' }, 300, 'linearizable');
  }

  /** A linearizable read of every key on `n` (recorded): the final state. */
  async finalState(n: SimNode, timeoutMs: number): Promise<Map<string, string | null> | string> {
    const state = new Map<string, string | null>();
    const reader: Client = { name: 'final', home: 0, seq: 0, seen: new Map() };
    for (const key of KEYS) {
      const r = await this.#issue(reader, n, { op: 'get', key }, timeoutMs, 'linearizable');
      if (r === 'dead' || !r.ok)
        return `the final read of ${key} on ${n.id} failed: ${r === 'dead' ? 'node died' : errorText(r.error)}`;
      state.set(key, r.output as string | null);
    }
    return state;
  }

  async #loop(c: Client, untilMs: number): Promise<void> {
    const { world, random } = this.#o;
    while (world.now() < untilMs) {
      const n = this.#pickNode(c);
      if (n === undefined) {
        await new Promise<void>((resolve) => world.clock.setTimeout(resolve, 20));
        continue;
      }
      const inc = n.current;
      const thinkMs = random.range(1, 25);
      const slept = await race(new Promise<void>((resolve) => inc.clock.setTimeout(resolve, thinkMs)), inc.dead);
      if (slept === 'dead' || inc.group === undefined || world.now() >= untilMs) continue;
      const input = this.#draw(c);
      const consistency = input.op === 'get' && this.#o.leaseReads && random.chance(0.3) ? 'lease' : 'linearizable';
      await this.#issue(c, n, input, undefined, consistency);
    }
  }

  async #issue(
    c: Client,
    n: SimNode,
    input: KvInput,
    timeoutMs: number | undefined,
    consistency: 'linearizable' | 'lease',
  ): Promise<Result> {
    const inc: Incarnation = n.current;
    const group = inc.group;
    if (group === undefined || !inc.alive) return 'dead';
    const rec = this.#o.history.call(c.name, input);
    const r = await race(run(group, input, timeoutMs, consistency), inc.dead);
    if (r === 'dead') {
      this.stats.unknown++;
      rec.unknown();
      return 'dead';
    }
    if (r.ok) {
      this.stats.ok++;
      rec.ok(r.output);
      if (input.op === 'get') c.seen.set(input.key, r.output as string | null);
      if (consistency === 'lease') this.stats.leaseReads++;
      if (input.op === 'append' && input.key === APPEND_ONLY_KEY) this.appendsAcked.add(input.value);
      return r;
    }
    const e = r.error;
    if (e instanceof TimeoutError) {
      if (e.outcome === 'unknown') {
        this.stats.unknown++;
        rec.unknown();
      } else {
        this.stats.failed++;
        rec.failed();
      }
    } else if (e instanceof NoQuorumError || e instanceof NotLeaderError) {
      this.stats.failed++;
      rec.failed();
    } else {
      this.stats.other++;
      rec.unknown();
      this.#o.trace(`client ${c.name} on ${n.id}: ${errorText(e)}`);
    }
    return r;
  }

  #pickNode(c: Client): SimNode | undefined {
    const nodes = this.#o.cluster.nodes;
    for (let i = 0; i < nodes.length; i++) {
      const n = nodes[(c.home + i) % nodes.length]!;
      if (n.up && n.current.group !== undefined) return n;
    }
    return undefined;
  }

  #append(c: Client, key: string): KvInput {
    const value = `|${c.name}.${++c.seq}`;
    if (key === APPEND_ONLY_KEY) this.appendsIssued.add(value);
    return { op: 'append', key, value };
  }

  #draw(c: Client): KvInput {
    const rng = this.#o.random;
    const key = rng.pick(KEYS);
    if (key === APPEND_ONLY_KEY) return rng.chance(0.5) ? { op: 'get', key } : this.#append(c, key);
    const p = rng.next();
    if (p < 0.4) return { op: 'get', key };
    if (p < 0.6) return { op: 'put', key, value: `${c.name}.${++c.seq}` };
    if (p < 0.75) return this.#append(c, key);
    const expected = c.seen.get(key) ?? null;
    return { op: 'cas', key, expected, value: `${c.name}.${++c.seq}` };
  }
}

async function run(
  group: KvGroup,
  input: KvInput,
  timeoutMs: number | undefined,
  consistency: 'linearizable' | 'lease',
): Promise<{ ok: true; output: KvOutput } | { ok: false; error: unknown }> {
  const opts = timeoutMs === undefined ? {} : { timeoutMs };
  try {
    const output =
      input.op === 'get'
        ? await group.query({ op: 'get', key: input.key }, { ...opts, consistency })
        : await group.command(input, opts);
    return { ok: true, output };
  } catch (error) {
    return { ok: false, error };
  }
}

function race<T>(p: Promise<T>, dead: Promise<void>): Promise<T | 'dead'> {
  return Promise.race([p, dead.then(() => 'dead' as const)]);
}

function errorText(e: unknown): string {
  return e instanceof Error ? `${e.name}: ${e.message}` : String(e);
}

export function describe(i: KvInput): string {
  return JSON.stringify(i);
}
