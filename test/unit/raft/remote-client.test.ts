/**
 * The remote group client and its wire format, on virtual time: requests go to fake nodes that serve them with
 * serveGroupRequest over one shared Applier (the replicated state every replica computes), so exactly-once is the
 * real session table's. Failures are scripted per node: unreachable, no replica, an answer lost after the apply, a
 * node that never answers, no quorum, a leader hint, a refusal.
 */
import { describe, expect, it } from 'vitest';
import {
  ClosedError,
  CorruptDataError,
  InvalidArgumentError,
  NoQuorumError,
  NotLeaderError,
  PeerUnavailableError,
  SessionExpiredError,
  TimeoutError,
} from '../../../src/errors.js';
import type { RaftGroup } from '../../../src/raft/node/group.js';
import {
  RemoteGroupClient,
  decodeGroupAnswer,
  decodeGroupRequest,
  encodeGroupAnswer,
  encodeGroupRequest,
  serveGroupRequest,
  type GroupAnswer,
  type GroupRequest,
} from '../../../src/raft/node/remote-client.js';
import {
  Applier,
  encodeCommand,
  encodeRegister,
  jsonCodec,
  type StateMachine,
} from '../../../src/raft/node/state-machine.js';
import { VirtualClock } from '../../../src/store/clock.js';
import { drive } from '../../harness/virtual-time.js';

/** Each command appends its id; the result is the log's length then. A double apply shows as a repeated id. */
const logMachine: StateMachine<string[], { id: string }, null, number, string[]> = {
  initial: () => [],
  command: (state, c) => {
    state.push(c.id);
    return { state, result: state.length };
  },
  query: (state) => [...state],
  snapshot: (state) => jsonCodec.encode(state),
  restore: (b) => jsonCodec.decode(b) as string[],
};

type Mode =
  | 'ok'
  | 'down'
  | 'no-replica'
  | 'lose-answer'
  | 'hang'
  | 'no-quorum'
  | 'invalid'
  | 'closed-before'
  | 'closed-after'
  | `not-leader:${string}`;

class World {
  readonly clock = new VirtualClock(0);
  readonly applier: Applier<string[]>;
  #index = 0;
  #nonce = 0;
  readonly modes = new Map<string, Mode>();
  readonly sent: { peer: string; req: GroupRequest }[] = [];
  /** Called before a node serves a request (to change the world between attempts). */
  beforeServe: ((peer: string, req: GroupRequest) => void) | undefined;

  constructor(maxSessions = 100) {
    this.applier = new Applier(logMachine as StateMachine<string[], unknown, unknown, unknown>, jsonCodec, maxSessions);
  }

  register(): number {
    const nonce = new Uint8Array(16);
    new DataView(nonce.buffer).setUint32(0, ++this.#nonce);
    const a = this.applier.apply(++this.#index, encodeRegister(nonce), 'test');
    if (a.kind !== 'registered') throw new Error('not registered');
    return a.session;
  }

  /**
   * What one node's replica would do: the group's remote surface over the shared state. `closes`: the replica closes
   * under the request, before proposing anything or once the command is applied (the answer is then lost).
   */
  #group(peer: string, closes?: 'before' | 'after'): RaftGroup {
    const closed = (outcome: 'unknown' | 'not-applied'): Promise<never> =>
      Promise.reject(new ClosedError(`raft group g on node ${peer}`, { outcome }));
    if (closes === 'before') {
      return {
        remote: {
          registerSession: () => closed('not-applied'),
          command: () => closed('not-applied'),
          query: () => Promise.reject(new ClosedError(`raft group g on node ${peer}`)),
          leader: () => peer,
        },
      } as unknown as RaftGroup;
    }
    const remote = {
      registerSession: () => Promise.resolve(this.register()),
      command: (session: number, seq: number, lowest: number, payload: Uint8Array) => {
        const a = this.applier.apply(++this.#index, encodeCommand(session, seq, lowest, payload), 'test');
        if (closes === 'after') return closed('unknown');
        if (a.kind === 'result') return Promise.resolve(jsonCodec.encode(a.result));
        if (a.kind === 'expired') return Promise.reject(new SessionExpiredError(String(session)));
        return new Promise<Uint8Array>(() => undefined);
      },
      query: (payload: Uint8Array) => Promise.resolve(jsonCodec.encode(this.applier.query(jsonCodec.decode(payload)))),
      leader: () => peer,
    };
    return { remote } as unknown as RaftGroup;
  }

  readonly request = (peer: string, payload: Uint8Array, timeoutMs: number): Promise<Uint8Array> => {
    const req = decodeGroupRequest(payload);
    this.sent.push({ peer, req });
    const mode = this.modes.get(peer) ?? 'ok';
    return new Promise<Uint8Array>((resolve, reject) => {
      this.clock.setTimeout(() => {
        this.beforeServe?.(peer, req);
        const error = (code: string, message: string, leader?: string): void =>
          resolve(encodeGroupAnswer({ kind: 'error', leader, code, message, outcome: undefined }));
        switch (mode) {
          case 'down':
            return reject(new PeerUnavailableError(peer, 'not-connected', 'not-applied'));
          case 'hang':
            this.clock.setTimeout(
              () => reject(new TimeoutError('', 'a request', timeoutMs, 'unknown', { subject: peer })),
              timeoutMs - 1,
            );
            return;
          case 'no-quorum':
            return error('NO_QUORUM', 'no leader');
          case 'invalid':
            return error('INVALID_ARGUMENT', 'a refused command');
          case 'lose-answer':
            // Served (applied), then the connection dropped before the answer came back.
            void serveGroupRequest(() => this.#group(peer), payload).then(() =>
              reject(new PeerUnavailableError(peer, 'disconnected', 'unknown')),
            );
            return;
          case 'closed-before':
          case 'closed-after':
            void serveGroupRequest(
              () => this.#group(peer, mode === 'closed-before' ? 'before' : 'after'),
              payload,
            ).then(resolve);
            return;
          case 'no-replica':
          case 'ok':
            void serveGroupRequest((g) => (mode === 'ok' && g === 'g' ? this.#group(peer) : undefined), payload).then(
              resolve,
            );
            return;
          default: {
            const leader = mode.slice('not-leader:'.length);
            return error(
              'NOT_LEADER',
              new NotLeaderError('g', { id: leader, address: undefined }, 'x').message,
              leader,
            );
          }
        }
      }, 1);
    });
  };

  client(o: { candidates?: string[]; timeoutMs?: number; onLeaderHint?: (l: string) => void } = {}) {
    return new RemoteGroupClient<{ id: string }, null, number, string[]>({
      group: 'g',
      request: this.request,
      candidates: () => o.candidates ?? ['n1', 'n2', 'n3'],
      clock: () => this.clock.now(),
      timers: this.clock,
      timeoutMs: o.timeoutMs ?? 5000,
      attemptTimeoutMs: 500,
      ...(o.onLeaderHint ? { onLeaderHint: o.onLeaderHint } : {}),
    });
  }

  get log(): string[] {
    return this.applier.query(null) as string[];
  }

  commands(): Extract<GroupRequest, { kind: 'command' }>[] {
    return this.sent.map((s) => s.req).filter((r) => r.kind === 'command');
  }
}

describe('group request wire format', () => {
  it('round-trips every request and answer kind', () => {
    const reqs: GroupRequest[] = [
      { kind: 'register', group: 'orders/1', timeoutMs: 250 },
      { kind: 'command', group: 'g', timeoutMs: 1, session: 7, seq: 2 ** 40, lowest: 3, payload: Uint8Array.of(1, 2) },
      { kind: 'query', group: 'g', timeoutMs: 9, consistency: 'lease', payload: new Uint8Array(0) },
    ];
    for (const r of reqs) expect(decodeGroupRequest(encodeGroupRequest(r))).toEqual(r);
    const answers: GroupAnswer[] = [
      { kind: 'session', leader: 'n2', session: 12 },
      { kind: 'value', leader: undefined, payload: Uint8Array.of(9) },
      { kind: 'no-replica', leader: undefined },
      { kind: 'error', leader: 'n1', code: 'TIMEOUT', message: 'slow', outcome: 'unknown' },
      { kind: 'error', leader: undefined, code: 'NO_QUORUM', message: 'none', outcome: undefined },
    ];
    for (const a of answers) expect(decodeGroupAnswer(encodeGroupAnswer(a))).toEqual(a);
  });

  it('refuses another version, a truncated or padded message, with CorruptDataError; the server answers so', async () => {
    const good = encodeGroupRequest({ kind: 'register', group: 'g', timeoutMs: 5 });
    const v2 = Uint8Array.from(good);
    v2[0] = 2;
    expect(() => decodeGroupRequest(v2)).toThrow(/version 2; this node speaks version 1/);
    expect(() => decodeGroupRequest(good.subarray(0, good.length - 1))).toThrow(CorruptDataError);
    expect(() => decodeGroupRequest(Uint8Array.of(...good, 0))).toThrow(CorruptDataError);
    expect(() => decodeGroupAnswer(Uint8Array.of(1, 9, 0))).toThrow(CorruptDataError);
    const answer = decodeGroupAnswer(await serveGroupRequest(() => undefined, v2));
    expect(answer).toMatchObject({ kind: 'error', code: 'CORRUPT_DATA' });
    // A node without a replica of the group says so with its own kind.
    expect(decodeGroupAnswer(await serveGroupRequest(() => undefined, good))).toEqual({
      kind: 'no-replica',
      leader: undefined,
    });
  });
});

describe('RemoteGroupClient (virtual time)', () => {
  it('goes past an unreachable node and one without a replica; registers once for concurrent calls', async () => {
    const w = new World();
    w.modes.set('n1', 'down');
    w.modes.set('n2', 'no-replica');
    const c = w.client();
    const results = await drive(w.clock, Promise.all(['a', 'b', 'c', 'd'].map((id) => c.command({ id }))));
    expect(results.sort()).toEqual([1, 2, 3, 4]);
    expect(w.log.sort()).toEqual(['a', 'b', 'c', 'd']);
    expect(w.sent.filter((s) => s.req.kind === 'register' && s.peer === 'n3')).toHaveLength(1);
    // Every command was tried in candidate order, and served by n3, under one (session, seq) each.
    const bySeq = new Map<number, string[]>();
    for (const s of w.sent) {
      if (s.req.kind !== 'command') continue;
      bySeq.set(s.req.seq, [...(bySeq.get(s.req.seq) ?? []), s.peer]);
    }
    expect([...bySeq.values()]).toEqual(Array.from({ length: 4 }, () => ['n1', 'n2', 'n3']));
    expect(new Set(w.commands().map((r) => r.session)).size).toBe(1);
    for (const r of w.commands()) expect(r.lowest).toBeLessThanOrEqual(r.seq);
    expect(await drive(w.clock, c.query(null))).toEqual(w.log);
  });

  it('an answer lost after the apply: the retry elsewhere carries the same (session, seq) and applies nothing', async () => {
    const w = new World();
    w.modes.set('n1', 'lose-answer');
    const c = w.client();
    expect(await drive(w.clock, c.command({ id: 'once' }))).toBe(1);
    expect(w.log).toEqual(['once']);
    const [first, second] = w.commands();
    expect(w.sent.filter((s) => s.req.kind === 'command').map((s) => s.peer)).toEqual(['n1', 'n2']);
    expect([second!.session, second!.seq]).toEqual([first!.session, first!.seq]);
  });

  it('a node that never answers is left after the attempt time; the next one serves', async () => {
    const w = new World();
    w.modes.set('n1', 'hang');
    const c = w.client();
    expect(await drive(w.clock, c.command({ id: 'x' }))).toBe(1);
    // Twice 500 ms (attemptTimeoutMs) at n1: once registering, once for the command; never the whole 5 s.
    expect(w.clock.now()).toBeGreaterThanOrEqual(1000);
    expect(w.clock.now()).toBeLessThan(1100);
    expect(w.log).toEqual(['x']);
  });

  it('a replica closed under a command (dropped, moved away): the next node gets the same (session, seq), applied once', async () => {
    const w = new World();
    const c = w.client();
    await drive(w.clock, c.command({ id: 'warm' }));
    w.modes.set('n1', 'closed-after');
    expect(await drive(w.clock, c.command({ id: 'once' }))).toBe(2);
    expect(w.log).toEqual(['warm', 'once']);
    const tries = w.commands().slice(1);
    expect(tries.map((r) => w.sent.find((s) => s.req === r)!.peer)).toEqual(['n1', 'n2']);
    expect([tries[1]!.session, tries[1]!.seq]).toEqual([tries[0]!.session, tries[0]!.seq]);
    // Its answer says the outcome is unknown there; one closed before proposing answers as a node without a replica.
    const req = encodeGroupRequest({ ...tries[0]!, seq: tries[0]!.seq + 1, lowest: tries[0]!.seq + 1 });
    w.modes.set('n1', 'closed-before');
    expect(decodeGroupAnswer(await drive(w.clock, w.request('n1', req, 500)))).toEqual({
      kind: 'no-replica',
      leader: undefined,
    });
    w.modes.set('n1', 'closed-after');
    expect(decodeGroupAnswer(await drive(w.clock, w.request('n1', req, 500)))).toMatchObject({
      kind: 'error',
      code: 'CLOSED',
      outcome: 'unknown',
    });
  });

  it('every replica closed before proposing: not-applied when the time runs out (not unknown), queries too', async () => {
    const w = new World();
    const c = w.client({ timeoutMs: 1000 });
    await drive(w.clock, c.command({ id: 'warm' }));
    for (const n of ['n1', 'n2', 'n3']) w.modes.set(n, 'closed-before');
    const err = await drive(w.clock, c.command({ id: 'x' })).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TimeoutError);
    expect((err as TimeoutError).outcome).toBe('not-applied');
    const q = await drive(w.clock, c.query(null)).catch((e: unknown) => e);
    expect((q as TimeoutError).outcome).toBe('not-applied');
    expect(w.log).toEqual(['warm']);
  });

  it('a leader hint is tried next and reported', async () => {
    const w = new World();
    w.modes.set('n1', 'not-leader:n3');
    const hints: string[] = [];
    const c = w.client({ onLeaderHint: (l) => hints.push(l) });
    await drive(w.clock, c.command({ id: 'x' }));
    expect(w.sent.filter((s) => s.req.kind === 'command').map((s) => s.peer)).toEqual(['n1', 'n3']);
    expect(hints).toContain('n3');
  });

  it('an evicted session: re-registered once and the command sent again (it was not applied)', async () => {
    const w = new World(1);
    const c = w.client({ candidates: ['n1'] });
    await drive(w.clock, c.command({ id: 'a' }));
    const first = c.session;
    w.register(); // evicts the client's session (maxSessions 1)
    expect(await drive(w.clock, c.command({ id: 'b' }))).toBe(2);
    expect(c.session).not.toBe(first);
    expect(w.log).toEqual(['a', 'b']);
  });

  it('an evicted session after an attempt that may have applied: TimeoutError outcome unknown, not a second apply', async () => {
    const w = new World(1);
    const c = w.client();
    await drive(w.clock, c.command({ id: 'a' }));
    w.modes.set('n1', 'lose-answer');
    w.beforeServe = (peer, req) => {
      if (peer === 'n2' && req.kind === 'command') w.register();
    };
    const err = await drive(w.clock, c.command({ id: 'b' })).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TimeoutError);
    expect((err as TimeoutError).outcome).toBe('unknown');
    expect(w.log).toEqual(['a', 'b']);
  });

  it('runs out of time: not-applied when nothing was sent, unknown once a node may have it, NoQuorumError', async () => {
    const w = new World();
    for (const n of ['n1', 'n2', 'n3']) w.modes.set(n, 'down');
    const c = w.client({ timeoutMs: 1000 });
    // The session first: the world is up for it.
    for (const n of ['n1', 'n2', 'n3']) w.modes.set(n, 'ok');
    await drive(w.clock, c.command({ id: 'warm' }));
    for (const n of ['n1', 'n2', 'n3']) w.modes.set(n, 'down');
    const start = w.clock.now();
    const down = await drive(w.clock, c.command({ id: 'x' })).catch((e: unknown) => e);
    expect(down).toBeInstanceOf(TimeoutError);
    expect((down as TimeoutError).outcome).toBe('not-applied');
    expect(w.clock.now() - start).toBeGreaterThanOrEqual(1000);
    expect(w.clock.now() - start).toBeLessThan(1100);
    w.modes.set('n2', 'hang');
    const maybe = await drive(w.clock, c.command({ id: 'y' })).catch((e: unknown) => e);
    expect((maybe as TimeoutError).outcome).toBe('unknown');
    for (const n of ['n1', 'n2', 'n3']) w.modes.set(n, 'no-quorum');
    await expect(drive(w.clock, c.command({ id: 'z' }))).rejects.toBeInstanceOf(NoQuorumError);
    expect(w.log).toEqual(['warm']);
  });

  it('no candidate at all: asked again each round, then TimeoutError not-applied (not NoQuorumError)', async () => {
    const w = new World();
    let asked = 0;
    const c = new RemoteGroupClient({
      group: 'g',
      request: w.request,
      candidates: () => {
        asked++;
        return [];
      },
      clock: () => w.clock.now(),
      timers: w.clock,
      timeoutMs: 1000,
    });
    const err = await drive(w.clock, c.query(null)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TimeoutError);
    expect((err as TimeoutError).outcome).toBe('not-applied');
    expect(asked).toBeGreaterThan(3);
    expect(w.sent).toEqual([]);
  });

  it('a refusal (invalid command) is thrown at once, without trying other nodes', async () => {
    const w = new World();
    const c = w.client();
    await drive(w.clock, c.command({ id: 'warm' }));
    w.modes.set('n1', 'invalid');
    const before = w.sent.length;
    await expect(drive(w.clock, c.command({ id: 'x' }))).rejects.toBeInstanceOf(InvalidArgumentError);
    expect(w.sent.length - before).toBe(1);
  });
});
