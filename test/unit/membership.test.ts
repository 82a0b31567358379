/**
 * The lease/membership/election module every runtime shares (src/runtime/membership.ts), on the memory store
 * with virtual time: registration, a second process with the same id, self-fencing at the deadline and trust
 * regained, session loss and rejoin (waiting for the runtime's old work), the campaign, and a leave that fences
 * nothing.
 */
import { describe, expect, it } from 'vitest';
import { MemoryServer } from '../../src/backends/memory/server.js';
import { MemoryStore } from '../../src/backends/memory/store.js';
import { NodeIdInUseError } from '../../src/errors.js';
import { Membership, type MembershipHooks } from '../../src/runtime/membership.js';
import { VirtualClock } from '../../src/store/clock.js';
import { drive, until } from '../harness/virtual-time.js';

interface Node {
  readonly m: Membership;
  readonly store: MemoryStore;
  readonly log: string[];
  /** The runtime's old work after a session loss: the rejoin waits until this resolves. */
  stopWork: Promise<void>;
}

function node(
  server: MemoryServer,
  clock: VirtualClock,
  id: string,
  options: { joinTimeoutMs?: number; selfFenceMarginMs?: number; requestTimeoutMs?: number } = {},
): Node {
  const store = new MemoryStore({ server, clock, requestTimeoutMs: options.requestTimeoutMs ?? 500 });
  const log: string[] = [];
  const n: Node = { store, log, stopWork: Promise.resolve(), m: undefined as unknown as Membership };
  const hooks: MembershipHooks = {
    joined: (s) => void log.push(`joined ${s.id}`),
    fenced: () => void log.push('fenced'),
    unfenced: () => void log.push('unfenced'),
    sessionLost: () => {
      log.push('sessionLost');
      return n.stopWork;
    },
    elected: (l) => void log.push(`elected ${l.token}`),
    leadershipLost: (l) => void log.push(`leadershipLost ${l.token}`),
    kick: () => undefined,
    tick: () => undefined,
    error: (e, context) => void log.push(`error ${context}: ${String(e)}`),
    idTaken: () => void log.push('idTaken'),
  };
  (n as { m: Membership }).m = new Membership(
    {
      store,
      clock,
      scope: 'test group',
      nodeId: id,
      memberKey: `members/${id}`,
      electionPrefix: 'coord/',
      electionValue: id,
      sessionTtlMs: 2000,
      selfFenceMarginMs: options.selfFenceMarginMs ?? 400,
      reconcileIntervalMs: 100,
      joinTimeoutMs: options.joinTimeoutMs ?? 3000,
      selfFencing: true,
      record: (s) => ({ value: JSON.stringify({ id, session: s.id }) }),
    },
    hooks,
  );
  return n;
}

describe('membership (the lease module every runtime shares)', () => {
  it('registers, leads alone, and a second process with the same id is refused with a CONFLICT error', async () => {
    const clock = new VirtualClock(1000);
    const server = new MemoryServer({ clock });
    const a = node(server, clock, 'n1');
    await drive(clock, a.m.join());
    expect(a.m.state).toBe('active');
    expect(a.m.ownsNow()).toBe(true);
    await until(clock, () => a.m.leadership !== undefined, 'a leads');
    expect((await a.store.get('members/n1'))?.sessionId).toBe(a.m.session!.id);

    const twin = node(server, clock, 'n1', { joinTimeoutMs: 1000 });
    const err = await drive(clock, twin.m.join()).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NodeIdInUseError);
    expect((err as NodeIdInUseError).code).toBe('CONFLICT');
    expect((err as NodeIdInUseError).retryable).toBe(false);
    expect(twin.m.state).toBe('left');
    // The refused twin left no session (and so no key) behind.
    expect((await a.store.get('members/n1'))?.sessionId).toBe(a.m.session!.id);
    await drive(clock, a.m.close());
  });

  it('fences at the lease deadline while the store hangs, and is unfenced when a keep-alive gets through in time', async () => {
    const clock = new VirtualClock(1000);
    const server = new MemoryServer({ clock });
    // A wide margin: room for a keep-alive to get through between the fence and the session's own deadline.
    const a = node(server, clock, 'n1', { selfFenceMarginMs: 1000 });
    await drive(clock, a.m.join());
    const deadline = a.m.leaseDeadlineMs;
    // Keep-alives time out (500 ms) but the server keeps the session: a slow store, not a dead one.
    a.store.faults = { request: () => ({ latencyMs: 800 }) };
    await until(clock, () => a.log.includes('fenced'), 'fenced');
    expect(a.m.ownsNow()).toBe(false);
    expect(a.m.fenced).toBe(true);
    expect(clock.now()).toBeLessThanOrEqual(deadline + 2000);
    a.store.faults = {};
    await until(clock, () => a.log.includes('unfenced'), 'unfenced');
    expect(a.m.ownsNow()).toBe(true);
    await drive(clock, a.m.close());
  });

  it('after a session loss: tells the runtime, waits for its old work to stop, then rejoins with a new session', async () => {
    const clock = new VirtualClock(1000);
    const server = new MemoryServer({ clock });
    const a = node(server, clock, 'n1');
    await drive(clock, a.m.join());
    await until(clock, () => a.m.leadership !== undefined, 'a leads');
    const first = a.m.session!.id;
    let finishWork!: () => void;
    a.stopWork = new Promise((r) => (finishWork = r));
    // Partitioned past the TTL: the server expires the session.
    a.store.faults = { request: () => ({ fail: 'before' }) };
    await until(clock, () => a.log.includes('sessionLost'), 'sessionLost');
    expect(a.m.fenced).toBe(true);
    expect(a.log.some((l) => l.startsWith('leadershipLost'))).toBe(true);
    a.store.faults = {};
    await clock.runFor(3000);
    // The old work has not stopped: no new session yet.
    expect(a.m.state).toBe('rejoining');
    expect(a.log.filter((l) => l.startsWith('joined'))).toHaveLength(1);
    finishWork();
    await until(clock, () => a.m.state === 'active', 'rejoined');
    expect(a.m.session!.id).not.toBe(first);
    expect(a.m.fenced).toBe(false);
    await until(clock, () => a.m.leadership !== undefined, 'a leads again');
    await drive(clock, a.m.close());
  });

  it('after a session loss the old session is ended on the server at once: the rejoin does not wait out its lease', async () => {
    const clock = new VirtualClock(1000);
    const server = new MemoryServer({ clock });
    const a = node(server, clock, 'n1');
    await drive(clock, a.m.join());
    const first = a.m.session!.id;
    // Keep-alives reach the server but their answers are lost: the server keeps extending the lease while this node
    // cannot know it, so its deadline passes here (session lost) with the lease alive there for up to a TTL more —
    // like a store back from an outage that gave every lease a fresh TTL.
    let finishWork!: () => void;
    a.stopWork = new Promise((r) => (finishWork = r));
    a.store.faults = { request: (kind) => (kind === 'keepAlive' ? { fail: 'after' } : {}) };
    await until(clock, () => a.log.includes('sessionLost'), 'sessionLost');
    await clock.runFor(300);
    // Nothing is ended before the runtime's old work has stopped. Still alive on the server (this extends it once
    // more: a full TTL from now).
    expect(server.keepAlive(first)).toBe(true);
    finishWork();
    const stoppedAt = clock.now();
    await until(clock, () => a.m.state === 'active', 'rejoined');
    // Well within the TTL (2 s) the old lease still had on the server.
    expect(clock.now() - stoppedAt).toBeLessThan(1000);
    expect(a.m.session!.id).not.toBe(first);
    expect((await a.store.get('members/n1'))?.sessionId).toBe(a.m.session!.id);
    expect(server.keepAlive(first)).toBe(false); // ended on the server
    await drive(clock, a.m.close());
  });

  it('a graceful leave deregisters, fences nothing, and the next candidate leads', async () => {
    const clock = new VirtualClock(1000);
    const server = new MemoryServer({ clock });
    const a = node(server, clock, 'n1');
    const b = node(server, clock, 'n2');
    await drive(clock, a.m.join());
    await until(clock, () => a.m.leadership !== undefined, 'a leads');
    await drive(clock, b.m.join());
    await clock.runFor(500);
    expect(b.m.leadership).toBeUndefined();
    const r = await drive(clock, a.m.deregister());
    expect(r?.succeeded).toBe(true);
    expect(await a.store.get('members/n1')).toBeUndefined();
    await drive(clock, a.m.close());
    await clock.runFor(3000);
    expect(a.log).not.toContain('fenced');
    expect(a.m.state).toBe('left');
    await until(clock, () => b.m.leadership !== undefined, 'b leads');
    await drive(clock, b.m.close());
  });
});

describe('membership through a store that stalls (issue 12 item 3)', () => {
  const TTL = 2000;
  const MARGIN = 400;
  const BEAT = Math.floor(TTL / 5);
  const USABLE = TTL * 0.99;

  /**
   * Join, settle, then stall the store from `startMs` after the settle for `stallMs`: every request sent during the
   * stall is answered when it ends (a paused server answers its queued requests on resume). Returns when the member
   * was fenced, relative to the start of the stall.
   */
  async function stallRun(phaseMs: number, stallMs: number): Promise<{ fencedAt: number[] }> {
    const clock = new VirtualClock(1000);
    const server = new MemoryServer({ clock });
    // A real client's request timeout (5 s) is longer than any stall here: nothing times out.
    const a = node(server, clock, 'n1', { selfFenceMarginMs: MARGIN, requestTimeoutMs: 5000 });
    await drive(clock, a.m.join());
    await clock.runFor(3 * TTL + phaseMs);
    const start = clock.now();
    const end = start + stallMs;
    a.store.faults = {
      request: () => {
        const left = end - clock.now();
        return left > 0 ? { latencyMs: left } : {};
      },
    };
    const fencedAt: number[] = [];
    const wasFenced = { v: false };
    const stopAt = end + 2 * TTL;
    while (clock.now() < stopAt) {
      await clock.runFor(5);
      if (a.m.fenced && !wasFenced.v) fencedAt.push(clock.now() - start);
      wasFenced.v = a.m.fenced;
    }
    expect(a.m.session?.state, 'the session survives every stall shorter than its TTL').toBe('live');
    expect(a.m.ownsNow()).toBe(true);
    await drive(clock, a.m.close());
    return { fencedAt };
  }

  it('a member never fences again after the store answers: the next keep-alive follows a late reply at once', async () => {
    // A keep-alive is caught by a stall of 0.55 TTL: the deadline counts from the previous keep-alive, so the
    // member fences during the stall, and is trusted again on the reply. Before the fix the next keep-alive went
    // out a full beat after that late reply, while the new deadline counted from its (early) send: a second fence.
    for (const stallMs of [0.5 * TTL, 0.55 * TTL, 0.6 * TTL, 0.7 * TTL]) {
      for (let phaseMs = 0; phaseMs < BEAT; phaseMs += 37) {
        const { fencedAt } = await stallRun(phaseMs, stallMs);
        const after = fencedAt.filter((t) => t > stallMs);
        expect(after, `stall ${stallMs} ms at phase ${phaseMs} ms: fenced after the store answered`).toEqual([]);
        expect(fencedAt.length).toBeLessThanOrEqual(1);
      }
    }
  });

  it('a stall shorter than TTL × 0.99 − margin − one beat never fences, whatever its phase', async () => {
    const survivable = USABLE - MARGIN - BEAT;
    for (const stallMs of [0.2 * TTL, 0.4 * TTL, survivable - 20]) {
      for (let phaseMs = 0; phaseMs < BEAT; phaseMs += 53) {
        const { fencedAt } = await stallRun(phaseMs, stallMs);
        expect(fencedAt, `stall ${stallMs} ms at phase ${phaseMs} ms`).toEqual([]);
      }
    }
  });

  it('a stall that starts just after an acknowledged keep-alive is ridden out up to TTL × 0.99 − margin', async () => {
    const clock = new VirtualClock(1000);
    const server = new MemoryServer({ clock });
    const a = node(server, clock, 'n1', { selfFenceMarginMs: MARGIN, requestTimeoutMs: 5000 });
    await drive(clock, a.m.join());
    await clock.runFor(3 * TTL);
    const s = a.m.session!;
    const before = s.safeUntilMs;
    // Wait for the next acknowledged keep-alive, then stall for just under what is left of the lease.
    await until(clock, () => s.safeUntilMs > before, 'a keep-alive is acknowledged');
    const stallMs = a.m.leaseDeadlineMs - clock.now() - 20;
    expect(stallMs).toBeGreaterThan(0.75 * TTL);
    const end = clock.now() + stallMs;
    a.store.faults = { request: () => ({ latencyMs: Math.max(0, end - clock.now()) }) };
    let fenced = false;
    while (clock.now() < end + 2 * TTL) {
      await clock.runFor(5);
      fenced ||= a.m.fenced;
    }
    expect(fenced).toBe(false);
    expect(a.log).not.toContain('fenced');
    await drive(clock, a.m.close());
  });
});
