/**
 * Raft on real processes under faults (issue 13, item 6): three node processes on loopback (raft-cluster.ts),
 * several concurrent clients on different nodes, and a fault: kill -9 of the leader, SIGSTOP of the leader past the
 * election timeout, a partition of the leader, an asymmetric partition (the leader cannot reach one follower, which
 * still reaches it; or a follower that hears the leader but that nobody hears), SIGSTOP of a follower, a node restarted with its data directory deleted. Every test ends
 * with the same checks:
 *
 *  - the client history (times from this process's monotonic clock, taken before a request leaves and after its
 *    answer arrives) is linearizable for the key-value model (src/sim/linearizability.ts);
 *  - no acknowledged write is lost: every acknowledged append is in the final value of its key, and no append is
 *    there twice (exactly once across retries and leader changes);
 *  - election safety, seen from outside: no two nodes reported leading in the same term.
 *
 * How answers become history: ok → the output; TIMEOUT with outcome 'unknown', a node killed before answering →
 * unknown (it may have applied); NO_QUORUM, NOT_LEADER, TIMEOUT 'not-applied' → failed (the library says it did not
 * take effect; if that were false, the checker would see the effect of an operation missing from the history).
 */
import { writeFileSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { checkOperations, HistoryRecorder } from '../../src/sim/linearizability.js';
import { kvModel, type KvInput, type KvOutput } from '../../src/sim/linearizability-models.js';
import { RaftCluster, type Answer, type RaftClusterOptions } from '../harness/raft-cluster.js';
import { eventually, sleep } from '../harness/wait.js';

const TICK_MS = 50;
const ELECTION_TICKS = 10;
/** The longest election timeout: 2 × electionTicks ticks. */
const MAX_ELECTION_MS = 2 * ELECTION_TICKS * TICK_MS;

let clusters: RaftCluster[] = [];
afterEach(async () => {
  await Promise.all(clusters.map((c) => c.close()));
  clusters = [];
});

async function cluster(options: RaftClusterOptions = {}): Promise<RaftCluster> {
  const c = await RaftCluster.start({
    tickMs: TICK_MS,
    electionTicks: ELECTION_TICKS,
    requestTimeoutMs: 2000,
    ...options,
  });
  clusters.push(c);
  return c;
}

const now = (): number => performance.now();

/** A token appended once by one client: delimited, so that one token is never a part of another. */
const token = (client: string, seq: number): string => `<${client}.${seq}>`;

interface Acked {
  readonly key: string;
  readonly value: string;
  readonly at: number;
}

/** Concurrent clients, each bound to one node, appending unique tokens and reading, all recorded. */
class Workload {
  readonly history = new HistoryRecorder<KvInput, KvOutput>(now);
  /** Appends acknowledged, with their return time. */
  readonly acked: Acked[] = [];
  /** Every token ever sent, per key. */
  readonly sent = new Map<string, Set<string>>();
  /** Answers no test expects (an internal error, a failed replica): the test fails on them. */
  readonly unexpected: string[] = [];
  readonly codes = new Map<string, number>();
  #stopped = false;
  readonly #loops: Promise<void>[] = [];
  readonly #c: RaftCluster;
  readonly #keys: readonly string[];

  constructor(c: RaftCluster, options: { perNode?: number; keys?: number } = {}) {
    this.#c = c;
    this.#keys = Array.from({ length: options.keys ?? 4 }, (_, i) => `k${i}`);
    const perNode = options.perNode ?? 2;
    for (const node of c.ids) {
      for (let i = 0; i < perNode; i++) this.#loops.push(this.#client(`${node}c${i}`, node));
    }
  }

  /** Acknowledged appends that returned after `t`. */
  ackedSince(t: number): number {
    return this.acked.filter((a) => a.at > t).length;
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    await Promise.all(this.#loops);
  }

  /** Send one request to `node` and record it; returns the answer. */
  async run(
    client: string,
    node: string,
    input: KvInput,
    consistency: 'linearizable' | 'lease' = 'linearizable',
  ): Promise<Answer> {
    const proc = this.#c.node(node);
    if (input.op === 'append') {
      let set = this.sent.get(input.key);
      if (set === undefined) this.sent.set(input.key, (set = new Set()));
      set.add(input.value);
    }
    const op = this.history.call(client, input);
    const answer =
      input.op === 'get'
        ? await proc.request({ op: 'query', query: input, consistency })
        : await proc.request({ op: 'command', command: input });
    this.#record(op, input, answer);
    return answer;
  }

  #record(op: ReturnType<HistoryRecorder<KvInput, KvOutput>['call']>, input: KvInput, a: Answer): void {
    const code = a.ok ? 'ok' : a.code;
    this.codes.set(code, (this.codes.get(code) ?? 0) + 1);
    if (a.ok) {
      op.ok(a.result as KvOutput);
      if (input.op === 'append') this.acked.push({ key: input.key, value: input.value, at: now() });
      return;
    }
    switch (a.code) {
      case 'NO_QUORUM':
      case 'NOT_LEADER':
        op.failed();
        return;
      case 'TIMEOUT':
        if (a.outcome === 'not-applied') op.failed();
        else op.unknown();
        return;
      case 'EXITED':
      case 'PARENT_TIMEOUT':
      case 'CLOSED':
        op.unknown();
        return;
      default:
        op.unknown();
        this.unexpected.push(`${JSON.stringify(input)} → ${a.code}: ${a.message}`);
    }
  }

  async #client(name: string, node: string): Promise<void> {
    let seq = 0;
    let i = 0;
    while (!this.#stopped) {
      if (this.#c.node(node).exited) {
        await sleep(50);
        continue;
      }
      // Every key gets reads and writes from every client: reads between the appends keep the search short (a
      // key with only appends and one final read would make the checker try their orders one by one).
      const n = this.#keys.length;
      const key = this.#keys[i % n]!;
      const write = (Math.floor(i / n) + name.length + name.charCodeAt(name.length - 1)) % 2 === 0;
      i++;
      if (write) {
        await this.run(name, node, { op: 'append', key, value: token(name, ++seq) });
      } else {
        await this.run(name, node, { op: 'get', key });
      }
      // A little air between operations: the history stays small enough to check quickly.
      await sleep(10);
    }
  }

  /**
   * The end of every test: read every key on the leader, then check linearizability, that no acknowledged append
   * is lost or applied twice, that nothing unexpected was answered, and election safety.
   */
  async finalChecks(): Promise<void> {
    await this.stop();
    const c = this.#c;
    const finals = new Map<string, string>();
    for (const key of this.#keys) {
      // On the leader; again on the next one should leadership move meanwhile (every try is in the history).
      const a = await eventually(
        async () => {
          const answer = await this.run('final', await c.waitLeader(), { op: 'get', key });
          return answer.ok && answer;
        },
        { what: `a final read of ${key}`, timeoutMs: 15_000 },
      );
      finals.set(key, (a.result as string | null) ?? '');
    }
    // Every check runs, and one failure lists everything that broke (a lost write and two leaders in a term often
    // come together).
    const problems: string[] = [];
    const list = (what: string, items: readonly string[]): void => {
      if (items.length > 0) problems.push(`${what} (${items.length}): ${items.slice(0, 10).join(', ')}`);
    };
    list('unexpected answers', this.unexpected);
    // A node that lost its data directory says so (DATA_LOST); anything else a node reports is a finding.
    list(
      'errors the nodes reported',
      c.nodeErrors.filter((e) => !/^n\d+: DATA_LOST:/.test(e)),
    );
    list('election safety: two leaders in one term', c.electionSafetyViolations());
    const lost: string[] = [];
    const twice: string[] = [];
    const strange: string[] = [];
    for (const a of this.acked) if (!finals.get(a.key)!.includes(a.value)) lost.push(`${a.key} ${a.value}`);
    for (const [key, value] of finals) {
      const tokens = value.match(/<[^>]*>/g) ?? [];
      const seen = new Set<string>();
      for (const t of tokens) {
        if (seen.has(t)) twice.push(`${key} ${t}`);
        seen.add(t);
        if (!this.sent.get(key)?.has(t)) strange.push(`${key} ${t}`);
      }
    }
    list(`acknowledged appends lost (of ${this.acked.length})`, lost);
    list('appends applied twice', twice);
    list('values nobody wrote', strange);
    if (this.acked.length < 20) problems.push(`only ${this.acked.length} appends acknowledged`);
    const ops = this.history.operations();
    const dump = process.env['RAFT_PROC_DUMP'];
    if (dump !== undefined) writeFileSync(dump, JSON.stringify(ops));
    const result = checkOperations(kvModel(), ops, { timeLimitMs: 20_000 });
    if (result.result !== 'ok') problems.push(`${ops.length} operations: ${result.message}`);
    const summary = `answers: ${JSON.stringify(Object.fromEntries(this.codes))}; leaders by term: ${c.leadersByTerm()}`;
    expect(problems, summary).toEqual([]);
  }
}

/** Wait until `node` has applied everything `leader` had committed when the wait began. */
async function caughtUp(c: RaftCluster, node: string, leader: string): Promise<void> {
  const target = (await c.status(leader))?.committed ?? 0;
  await eventually(
    async () => {
      const s = await c.status(node);
      return s !== undefined && s.applied >= target;
    },
    { what: `${node} to apply up to ${leader}'s commit index ${target}`, timeoutMs: 15_000, intervalMs: 50 },
  );
}

async function acksSince(w: Workload, t: number, count: number, what: string): Promise<void> {
  await eventually(() => w.ackedSince(t) >= count, {
    what: `${count} acknowledged writes ${what}`,
    timeoutMs: 15_000,
    intervalMs: 20,
    context: () => `answers so far: ${JSON.stringify(Object.fromEntries(w.codes))}`,
  });
}

describe('raft on real processes under faults', () => {
  it('kill -9 of the leader under load: a new leader takes the writes; restarted from disk, it catches up', async () => {
    const c = await cluster();
    const leader = await c.waitLeader();
    const w = new Workload(c);
    await acksSince(w, 0, 20, 'before the kill');
    const killedAt = now();
    await c.kill(leader);
    const next = await c.waitLeader({ not: leader });
    await acksSince(w, killedAt, 20, `after the kill of ${leader}`);
    await c.start(leader);
    await caughtUp(c, leader, next);
    const restartedAt = now();
    await acksSince(w, restartedAt, 10, `after ${leader} came back`);
    await w.finalChecks();
  }, 40_000);

  it('SIGSTOP of the leader past the election timeout, then SIGCONT: no stale read, no write it cannot commit', async () => {
    const c = await cluster({ leaseReads: true });
    const old = await c.waitLeader();
    const w = new Workload(c);
    await acksSince(w, 0, 20, 'before the pause');
    // A value the stopped leader knows, then a newer one written while it is stopped.
    expect(await w.run('probe', old, { op: 'put', key: 'probe', value: 'before' })).toMatchObject({ ok: true });
    await c.node(old).pause();
    const pausedAt = now();
    const next = await c.waitLeader({ not: old });
    expect(await w.run('probe', next, { op: 'put', key: 'probe', value: 'after' })).toMatchObject({ ok: true });
    await acksSince(w, pausedAt, 10, `while ${old} is stopped`);
    await sleep(Math.max(0, pausedAt + 2 * MAX_ELECTION_MS - now()));
    // Reads and a write queued for the stopped leader: it handles them when it resumes, maybe before it hears
    // of the new term. The clients bound to it have requests waiting too.
    const queued = [
      w.run('probe-lease', old, { op: 'get', key: 'probe' }, 'lease'),
      w.run('probe-read', old, { op: 'get', key: 'probe' }),
      w.run('probe-write', old, { op: 'append', key: 'k0', value: token('probe', 1) }),
    ];
    c.node(old).resume();
    const [lease, read] = await Promise.all(queued);
    // Refused, or fresh (the checker judges the rest of the history).
    if (lease!.ok) expect(lease!.result).toBe('after');
    if (read!.ok) expect(read!.result).toBe('after');
    await acksSince(w, now(), 10, 'after the resume');
    await w.finalChecks();
  }, 40_000);

  it('SIGSTOP of the leader, then SIGCONT while it is cut off: its lease has expired, it serves no lease read', async () => {
    const c = await cluster({ leaseReads: true });
    const old = await c.waitLeader();
    const w = new Workload(c, { perNode: 1 });
    await acksSince(w, 0, 10, 'before the pause');
    expect(await w.run('probe', old, { op: 'put', key: 'probe', value: 'before' })).toMatchObject({ ok: true });
    // Lease reads work while it leads undisturbed.
    expect(await w.run('probe', old, { op: 'get', key: 'probe' }, 'lease')).toMatchObject({
      ok: true,
      result: 'before',
    });
    await c.node(old).pause();
    const pausedAt = now();
    // Cut off at once (before the others elect a new leader, whose messages would wait in its socket buffers):
    // when it resumes it cannot hear of the new term; only its own clock can tell it that its lease is over.
    c.isolate(old);
    const next = await c.waitLeader({ not: old });
    expect(await w.run('probe', next, { op: 'put', key: 'probe', value: 'after' })).toMatchObject({ ok: true });
    await sleep(Math.max(0, pausedAt + 2 * MAX_ELECTION_MS - now()));
    const lease = w.run('probe-lease', old, { op: 'get', key: 'probe' }, 'lease');
    c.node(old).resume();
    const answer = await lease;
    process.stdout.write(`lease read on ${old} after the pause: ${JSON.stringify(answer)}\n`);
    expect(answer.ok ? `served ${JSON.stringify(answer.result)}` : answer.code).not.toBe('served "before"');
    c.heal();
    await caughtUp(c, old, await c.waitLeader());
    await w.finalChecks();
  }, 40_000);

  it('a partition of the leader, then heal: the majority goes on, the old leader rejoins', async () => {
    const c = await cluster();
    const leader = await c.waitLeader();
    const w = new Workload(c);
    await acksSince(w, 0, 20, 'before the partition');
    const cutAt = now();
    c.isolate(leader);
    const others = c.ids.filter((id) => id !== leader);
    const next = await c.waitLeader({ among: others });
    await acksSince(w, cutAt, 20, `while ${leader} is cut off`);
    // Long enough for requests stuck on the old leader to time out.
    await sleep(Math.max(0, cutAt + 2500 - now()));
    c.heal();
    await caughtUp(c, leader, next);
    await acksSince(w, now(), 10, 'after the heal');
    await w.finalChecks();
  }, 40_000);

  it('an asymmetric partition: the leader cannot reach one follower, which still reaches it; heal, all converge', async () => {
    const c = await cluster();
    const leader = await c.waitLeader();
    const [f, g] = c.ids.filter((id) => id !== leader) as [string, string];
    const w = new Workload(c);
    await acksSince(w, 0, 20, 'before the cut');
    // f hears nothing from the leader (no appends, no heartbeats) while the leader and g still hear f: f's
    // election timer fires, and its (pre-)votes reach both. They must not unseat a leader that a majority follows,
    // nor elect f, whose log falls behind; the leader and g go on, and f's clients' requests (forwarded to the
    // leader, whose answers are lost) fail or stay unknown.
    const termBefore = (await c.status(leader))!.term;
    const cutAt = now();
    c.cutOneWay(leader, f);
    await acksSince(w, cutAt, 20, `while ${leader} cannot reach ${f}`);
    // Well past f's longest election timeout, so that its campaigns have run while the others hear it.
    await sleep(Math.max(0, cutAt + 3 * MAX_ELECTION_MS - now()));
    const during = await c.waitLeader({ among: [leader, g] });
    // Pre-vote keeps f from disrupting: it never gets a majority for a new term (g hears the leader, and f's log
    // is behind), so the leader and its term stay. And the cut is real: f has applied less than the leader.
    const [ls, fs] = [await c.status(leader), await c.status(f)];
    expect({ during, term: ls?.term }).toEqual({ during: leader, term: termBefore });
    expect(fs!.applied).toBeLessThan(ls!.committed);
    await acksSince(w, now(), 10, `with ${during} leading, ${f} cut off one way`);
    c.mend(leader, f);
    const next = await c.waitLeader();
    await caughtUp(c, f, next);
    await caughtUp(c, next === g ? leader : g, next);
    await acksSince(w, now(), 10, 'after the heal');
    await w.finalChecks();
  }, 40_000);

  it('an asymmetric partition: a follower hears the leader but nobody hears it; heal, it catches up', async () => {
    const c = await cluster();
    const leader = await c.waitLeader();
    const [f, g] = c.ids.filter((id) => id !== leader) as [string, string];
    const w = new Workload(c);
    await acksSince(w, 0, 20, 'before the cut');
    // f receives appends and heartbeats but its acknowledgements, votes and forwarded requests are lost: it never
    // campaigns (it hears a leader), the leader cannot commit with it and goes on with g; requests made on f time
    // out. The leader keeps sending to f without answers: it must neither step down nor stall the others.
    const termBefore = (await c.status(leader))!.term;
    const cutAt = now();
    c.cutOneWay(f, leader);
    c.cutOneWay(f, g);
    // The cut is real: a write made on f cannot be acknowledged (its forward never arrives; it times out).
    const fromF = w.run('probe', f, { op: 'put', key: 'probe', value: 'from-f' });
    await acksSince(w, cutAt, 20, `while nobody hears ${f}`);
    await sleep(Math.max(0, cutAt + 3 * MAX_ELECTION_MS - now()));
    await acksSince(w, now(), 10, `while nobody hears ${f}, later`);
    expect((await c.status(leader))!).toMatchObject({ role: 'leader', term: termBefore });
    expect(await fromF).toMatchObject({ ok: false });
    c.mend(f, leader);
    c.mend(f, g);
    const next = await c.waitLeader();
    await caughtUp(c, f, next);
    await acksSince(w, now(), 10, 'after the heal');
    await w.finalChecks();
  }, 40_000);

  it('SIGSTOP of a follower past the election timeout, then SIGCONT: the others go on, it catches up, no stale read', async () => {
    const c = await cluster();
    const leader = await c.waitLeader();
    const f = c.ids.find((id) => id !== leader)!;
    const w = new Workload(c);
    await acksSince(w, 0, 20, 'before the pause');
    expect(await w.run('probe', leader, { op: 'put', key: 'probe', value: 'before' })).toMatchObject({ ok: true });
    // f has applied 'before' (a linearizable read on f waits for it): what it would answer if it answered stale.
    await caughtUp(c, f, leader);
    await c.node(f).pause();
    const pausedAt = now();
    // The clients bound to f have requests stuck in it; the two others go on.
    expect(await w.run('probe', leader, { op: 'put', key: 'probe', value: 'after' })).toMatchObject({ ok: true });
    await acksSince(w, pausedAt, 20, `while ${f} is stopped`);
    await sleep(Math.max(0, pausedAt + 2 * MAX_ELECTION_MS - now()));
    // Queued for the stopped follower: it handles them on resume, before it has heard from the leader again.
    const queued = [
      w.run('probe-queued', f, { op: 'get', key: 'probe' }),
      w.run('probe-write', f, { op: 'append', key: 'k0', value: token('probe', 1) }),
    ];
    c.node(f).resume();
    const resumedAt = now();
    // Issued after SIGCONT: a linearizable read on f must see 'after' (or be refused), never f's stale 'before'.
    const fresh = await w.run('probe-fresh', f, { op: 'get', key: 'probe' });
    const [queuedRead] = await Promise.all(queued);
    if (queuedRead!.ok) expect(queuedRead!.result).toBe('after');
    if (fresh.ok) expect(fresh.result).toBe('after');
    const next = await c.waitLeader();
    await caughtUp(c, f, next);
    // Served by f now that it has caught up: must succeed, and be fresh.
    expect(await w.run('probe-caught-up', f, { op: 'get', key: 'probe' })).toMatchObject({
      ok: true,
      result: 'after',
    });
    await acksSince(w, resumedAt, 10, `after ${f} resumed`);
    await w.finalChecks();
  }, 40_000);

  it('a follower restarted with its data directory deleted, the others up: it catches up from the leader', async () => {
    const c = await cluster();
    const leader = await c.waitLeader();
    const follower = c.ids.find((id) => id !== leader)!;
    const w = new Workload(c);
    await acksSince(w, 0, 20, 'at the start');
    await c.restart(follower, { wipe: true });
    await caughtUp(c, follower, leader);
    await acksSince(w, now(), 10, `after ${follower} caught up`);
    await w.finalChecks();
  }, 40_000);

  it('a node restarted with its data directory deleted does not elect a leader that lacks acknowledged writes', async () => {
    const c = await cluster();
    const leader = await c.waitLeader();
    const [x, y] = c.ids.filter((id) => id !== leader) as [string, string];
    const w = new Workload(c);
    await acksSince(w, 0, 10, 'at the start');
    // y falls behind: what is acknowledged now is on leader and x only.
    c.isolate(y);
    await acksSince(w, now(), 20, `while ${y} is cut off`);
    // The leader goes away, x loses its disk; x and y can talk. Had x kept its log, it would refuse y (whose log
    // is behind); empty, it must not hand y a majority that would overwrite acknowledged writes.
    c.isolate(leader);
    await c.restart(x, { wipe: true });
    c.mend(x, y);
    await sleep(3 * MAX_ELECTION_MS);
    c.heal();
    await c.waitLeader();
    await acksSince(w, now(), 10, 'after the heal');
    await w.finalChecks();
  }, 40_000);

  it('a node restarted with its data directory deleted does not vote again in a term it voted in', async () => {
    const c = await cluster();
    const first = await c.waitLeader();
    const w = new Workload(c);
    await acksSince(w, 0, 10, 'at the start');
    // The first leader is cut off (its term stays: pre-vote); the others elect one of them in a new term: x votes.
    c.isolate(first);
    const others = c.ids.filter((id) => id !== first);
    const y = await c.waitLeader({ among: others });
    const x = others.find((id) => id !== y)!;
    await acksSince(w, now(), 20, `with ${y} leading`);
    // x loses its disk and can talk to the first leader only. Had it kept its vote, it would refuse it the new term;
    // empty, it must not elect it there (two leaders in one term, and the writes acknowledged by y and x lost).
    c.isolate(y);
    await c.restart(x, { wipe: true });
    c.mend(first, x);
    await sleep(3 * MAX_ELECTION_MS);
    c.heal();
    await c.waitLeader();
    await acksSince(w, now(), 10, 'after the heal');
    await w.finalChecks();
  }, 40_000);
});
