/**
 * Commands and queries on a Raft group from a node that holds no replica of it (issue 14: any node of a fleet can
 * `command(group, …)`), over RaftNode.request.
 *
 * The client owns a client session of the group (state-machine.ts): it registers one (once, shared by concurrent
 * calls), numbers its commands itself and sends each as (session, seq, lowest outstanding seq). Any replica serves
 * it (`serveGroupRequest` → group.remote): a follower forwards to its leader and answers once it has applied the
 * entry. A retry — after a peer that is unreachable, holds no replica, has no leader, or did not answer in time —
 * goes to the next candidate with the same (session, seq), so it applies once whichever replicas see it.
 *
 * The wire format is the transport codec's style (a version byte, then fields in a fixed order; strict both ways):
 *
 *   request: u8 version=1 | u8 kind (1 register, 2 command, 3 query) | str group | uint timeoutMs |
 *            command: uint session | uint seq | uint lowest | bytes payload
 *            query:   u8 consistency (0 linearizable, 1 lease, 2 stale) | bytes payload
 *   answer:  u8 version=1 | u8 kind | str leader ('' unknown) |
 *            1 session: uint session · 2 value: bytes · 3 no-replica · 4 error: str code | str message |
 *            u8 outcome (0 none, 1 not-applied, 2 unknown)
 *
 * `no-replica` is its own kind: the client tries the next candidate at once, and knows nothing was proposed. A
 * replica that closes under a request (dropped, moved away, its node closing) answers it too when nothing was
 * proposed (or the request is a register or a query); a command it may have proposed gets a `CLOSED` error with
 * outcome `unknown`, and the client goes on to the next candidate with the same (session, seq) as well.
 */
import {
  ClosedError,
  CorruptDataError,
  InvalidArgumentError,
  LimitExceededError,
  NoQuorumError,
  NotLeaderError,
  PeerUnavailableError,
  RebalancerError,
  RemoteFailedError,
  TimeoutError,
  describe,
} from '../../errors.js';
import { Reader, Writer } from '../transport/codec.js';
import { MIN_WAIT_MS, type Timers } from '../transport/transport.js';
import type { Consistency, RaftGroup } from './group.js';
import { jsonCodec, type Codec } from './state-machine.js';

export const GROUP_REQUEST_VERSION = 1;
/** The longest a replica works on one remote request, whatever the client asked: a bounded wait per request. */
export const MAX_SERVE_MS = 60_000;

export type GroupRequest =
  | { readonly kind: 'register'; readonly group: string; readonly timeoutMs: number }
  | {
      readonly kind: 'command';
      readonly group: string;
      readonly timeoutMs: number;
      readonly session: number;
      readonly seq: number;
      readonly lowest: number;
      readonly payload: Uint8Array;
    }
  | {
      readonly kind: 'query';
      readonly group: string;
      readonly timeoutMs: number;
      readonly consistency: Consistency;
      readonly payload: Uint8Array;
    };

export type GroupAnswer =
  | { readonly kind: 'session'; readonly leader: string | undefined; readonly session: number }
  | { readonly kind: 'value'; readonly leader: string | undefined; readonly payload: Uint8Array }
  | { readonly kind: 'no-replica'; readonly leader: undefined }
  | {
      readonly kind: 'error';
      readonly leader: string | undefined;
      readonly code: string;
      readonly message: string;
      readonly outcome: 'unknown' | 'not-applied' | undefined;
    };

const REQUEST_KINDS = ['register', 'command', 'query'] as const;
const ANSWER_KINDS = ['session', 'value', 'no-replica', 'error'] as const;
const CONSISTENCIES: readonly Consistency[] = ['linearizable', 'lease', 'stale'];
const OUTCOMES = [undefined, 'not-applied', 'unknown'] as const;

function bad(what: string, cause?: unknown): CorruptDataError {
  return new CorruptDataError(`a raft group ${what} is malformed (${describe(cause)})`, {
    key: `raft group ${what}`,
    expected: `version ${GROUP_REQUEST_VERSION} of the group request format (src/raft/node/remote-client.ts)`,
    cause,
  });
}

function readVersion(r: Reader, what: string): void {
  const v = r.u8();
  if (v !== GROUP_REQUEST_VERSION) {
    throw new CorruptDataError(
      `a raft group ${what} of version ${v}; this node speaks version ${GROUP_REQUEST_VERSION}: run the same ` +
        'Rebalancer release on every node',
      { key: `raft group ${what}`, expected: `version ${GROUP_REQUEST_VERSION}` },
    );
  }
}

export function encodeGroupRequest(req: GroupRequest): Uint8Array {
  const w = new Writer(64 + (req.kind === 'register' ? 0 : req.payload.byteLength));
  w.u8(GROUP_REQUEST_VERSION);
  w.u8(REQUEST_KINDS.indexOf(req.kind) + 1);
  w.str(req.group);
  w.uint(Math.max(1, Math.floor(req.timeoutMs)));
  if (req.kind === 'command') {
    w.uint(req.session);
    w.uint(req.seq);
    w.uint(req.lowest);
    w.bytes(req.payload);
  } else if (req.kind === 'query') {
    w.u8(CONSISTENCIES.indexOf(req.consistency));
    w.bytes(req.payload);
  }
  return new Uint8Array(w.view());
}

export function decodeGroupRequest(bytes: Uint8Array): GroupRequest {
  const r = new Reader(bytes);
  readVersion(r, 'request');
  try {
    const kind = REQUEST_KINDS[r.u8() - 1];
    const group = r.str();
    const timeoutMs = r.uint();
    if (kind === undefined || timeoutMs < 1) throw new Error(kind === undefined ? 'unknown kind' : 'timeout 0');
    let req: GroupRequest;
    if (kind === 'register') req = { kind, group, timeoutMs };
    else if (kind === 'command') {
      const session = r.uint();
      const seq = r.uint();
      const lowest = r.uint();
      req = { kind, group, timeoutMs, session, seq, lowest, payload: r.bytes().slice() };
    } else {
      const consistency = CONSISTENCIES[r.u8()];
      if (consistency === undefined) throw new Error('unknown consistency');
      req = { kind, group, timeoutMs, consistency, payload: r.bytes().slice() };
    }
    r.end();
    return req;
  } catch (err) {
    throw bad('request', err);
  }
}

export function encodeGroupAnswer(a: GroupAnswer): Uint8Array {
  const w = new Writer(64 + (a.kind === 'value' ? a.payload.byteLength : 0));
  w.u8(GROUP_REQUEST_VERSION);
  w.u8(ANSWER_KINDS.indexOf(a.kind) + 1);
  w.str(a.leader ?? '');
  if (a.kind === 'session') w.uint(a.session);
  else if (a.kind === 'value') w.bytes(a.payload);
  else if (a.kind === 'error') {
    w.str(a.code);
    w.str(a.message);
    w.u8(OUTCOMES.indexOf(a.outcome));
  }
  return new Uint8Array(w.view());
}

export function decodeGroupAnswer(bytes: Uint8Array): GroupAnswer {
  const r = new Reader(bytes);
  readVersion(r, 'answer');
  try {
    const kind = ANSWER_KINDS[r.u8() - 1];
    const leaderText = r.str();
    const leader = leaderText === '' ? undefined : leaderText;
    let a: GroupAnswer;
    if (kind === 'session') a = { kind, leader, session: r.uint() };
    else if (kind === 'value') a = { kind, leader, payload: r.bytes().slice() };
    else if (kind === 'no-replica') a = { kind, leader: undefined };
    else if (kind === 'error') {
      const code = r.str();
      const message = r.str();
      const o = r.u8();
      if (o >= OUTCOMES.length) throw new Error(`unknown outcome ${o}`);
      a = { kind, leader, code, message, outcome: OUTCOMES[o] };
    } else throw new Error('unknown kind');
    r.end();
    return a;
  } catch (err) {
    throw bad('answer', err);
  }
}

/**
 * The server side: answer one request of a remote client (wire it into RaftNode.handleRequests). `lookupGroup`
 * returns this node's open replica of a group, or undefined when it holds none (the client then tries another
 * node). Never throws: every failure is an answer the client turns back into a typed error.
 */
export async function serveGroupRequest(
  lookupGroup: (name: string) => RaftGroup | undefined,
  payload: Uint8Array,
): Promise<Uint8Array> {
  let req: GroupRequest;
  try {
    req = decodeGroupRequest(payload);
  } catch (err) {
    const e = err as RebalancerError;
    return encodeGroupAnswer({
      kind: 'error',
      leader: undefined,
      code: e.code,
      message: e.message,
      outcome: undefined,
    });
  }
  return encodeGroupAnswer(await answerGroupRequest(lookupGroup, req));
}

/**
 * serveGroupRequest without the bytes: the answer to a decoded request. A node's own replica is served through it
 * in the process (RemoteGroupClientOptions.inProcess), the same call a peer's request gets. Never throws.
 */
export async function answerGroupRequest(
  lookupGroup: (name: string) => RaftGroup | undefined,
  req: GroupRequest,
): Promise<GroupAnswer> {
  const group = lookupGroup(req.group);
  if (group === undefined) return { kind: 'no-replica', leader: undefined };
  const options = { timeoutMs: Math.min(req.timeoutMs, MAX_SERVE_MS) };
  try {
    switch (req.kind) {
      case 'register': {
        const session = await group.remote.registerSession(options);
        return { kind: 'session', leader: group.remote.leader(), session };
      }
      case 'command': {
        const out = await group.remote.command(req.session, req.seq, req.lowest, req.payload, options);
        return { kind: 'value', leader: group.remote.leader(), payload: out };
      }
      case 'query': {
        const out = await group.remote.query(req.payload, req.consistency, options);
        return { kind: 'value', leader: group.remote.leader(), payload: out };
      }
    }
  } catch (err) {
    if (err instanceof ClosedError && (req.kind !== 'command' || err.outcome === 'not-applied')) {
      // The replica closed (dropped, moved away, its node closing) before the request was handed to a leader, or
      // the request changes nothing: as if this node held no replica — the client tries the next one at once.
      return { kind: 'no-replica', leader: undefined };
    }
    const leader =
      err instanceof NotLeaderError ? (err.leaderHint?.id ?? group.remote.leader()) : group.remote.leader();
    return {
      kind: 'error',
      leader,
      code: err instanceof RebalancerError ? err.code : 'ERROR',
      message: describe(err),
      // A command cut short by the close may be in the log: unknown here, and the client goes on elsewhere with
      // the same (session, seq), which the session table applies at most once.
      outcome:
        err instanceof TimeoutError ? err.outcome : err instanceof ClosedError ? (err.outcome ?? 'unknown') : undefined,
    };
  }
}

// ---- the client ---------------------------------------------------------------------------------------------------

export interface RemoteGroupClientOptions {
  /** The group's name. */
  readonly group: string;
  /** The group's codec (the same as its replicas'; default JSON). */
  readonly codec?: Codec;
  /** Send one request to a node (RaftNode.request): resolves with its answer, rejects with its typed errors. */
  readonly request: (peer: string, payload: Uint8Array, timeoutMs: number) => Promise<Uint8Array>;
  /**
   * Serve a request in this process when `peer` is this process's node (answerGroupRequest on its replica): the
   * same request and answer as over `request`, without their bytes. Undefined for any other peer (then `request`).
   */
  readonly inProcess?: (peer: string, req: GroupRequest) => Promise<GroupAnswer> | undefined;
  /** The nodes to try, best first (the cached leader first), asked again at every round. */
  readonly candidates: () => readonly string[];
  /** An answer named the group's leader (as the answering replica knows it): update a cache. */
  readonly onLeaderHint?: (leader: string) => void;
  readonly clock: () => number;
  readonly timers: Timers;
  /** Total time of a call, retries included (default 5000 ms). */
  readonly timeoutMs?: number;
  /** At most this long per attempt on one node (default 2000 ms): a node cut off from its leader is left in time. */
  readonly attemptTimeoutMs?: number;
  /** The pause after every candidate failed in a round: doubled per round from retryBaseMs to retryMaxMs. */
  readonly retryBaseMs?: number;
  readonly retryMaxMs?: number;
}

/** How one attempt ended, for the retry loop. */
type Attempt =
  | { readonly ok: true; readonly answer: GroupAnswer }
  /** Try the next candidate; `handed`: the request may have been acted on there. */
  | {
      readonly ok: false;
      readonly handed: boolean;
      readonly noQuorum: boolean;
      readonly expired: boolean;
      /** The leader the answering replica named, when another node: tried next. */
      readonly hint: string | undefined;
    }
  | { readonly ok: false; readonly final: unknown };

/** An attempt after which the next candidate is tried; `handed`: the request may have been acted on there. */
function next(handed: boolean, noQuorum = false, hint?: string): Attempt {
  return { ok: false, handed, noQuorum, expired: false, hint };
}

/** Codes of answers after which another node cannot do better: thrown at once. */
const FINAL_CODES = new Set(['INVALID_ARGUMENT', 'LIMIT_EXCEEDED', 'CORRUPT_DATA']);

export class RemoteGroupClient<C = unknown, Q = unknown, R = unknown, A = unknown> {
  readonly group: string;
  readonly #o: Required<Omit<RemoteGroupClientOptions, 'onLeaderHint' | 'inProcess'>> & {
    onLeaderHint: ((leader: string) => void) | undefined;
    inProcess: RemoteGroupClientOptions['inProcess'];
  };
  #session: number | undefined;
  #registering: Promise<number> | undefined;
  #seq = 0;
  readonly #outstanding = new Set<number>();

  constructor(options: RemoteGroupClientOptions) {
    if (typeof options.group !== 'string' || options.group === '') {
      throw new InvalidArgumentError('RemoteGroupClient options.group must be a group name');
    }
    this.group = options.group;
    const timeoutMs = options.timeoutMs ?? 5000;
    this.#o = {
      group: options.group,
      codec: options.codec ?? jsonCodec,
      request: options.request,
      candidates: options.candidates,
      onLeaderHint: options.onLeaderHint,
      inProcess: options.inProcess,
      clock: options.clock,
      timers: options.timers,
      timeoutMs,
      attemptTimeoutMs: options.attemptTimeoutMs ?? 2000,
      retryBaseMs: options.retryBaseMs ?? 20,
      retryMaxMs: options.retryMaxMs ?? 500,
    };
  }

  /** The client session in use (undefined until the first command registers one). */
  get session(): number | undefined {
    return this.#session;
  }

  /**
   * Apply `command` once on the group; resolves with its result. TimeoutError (outcome 'unknown' once the command
   * may have reached a replica, else 'not-applied') or NoQuorumError when the time runs out; the typed error at once
   * for a command the group refuses (too large, invalid).
   */
  async command(command: C, options: { readonly timeoutMs?: number } = {}): Promise<R> {
    const start = this.#o.clock();
    const deadline = start + this.#timeout(options);
    const payload = this.#o.codec.encode(command);
    let reRegistered = false;
    for (;;) {
      const session = await this.#ensureSession(start, deadline);
      const seq = ++this.#seq;
      this.#outstanding.add(seq);
      try {
        const out = await this.#run('a command', start, deadline, () => {
          let lowest = seq;
          for (const s of this.#outstanding) if (s < lowest) lowest = s;
          return { kind: 'command', group: this.group, timeoutMs: 0, session, seq, lowest, payload };
        });
        if (out.kind === 'expired') {
          if (this.#session === session) this.#session = undefined;
          // An earlier attempt may have applied it before the session was evicted: sending it again under a new
          // session could apply it twice. Only a command no replica may have seen is sent again (once).
          if (out.handed || reRegistered) {
            throw new TimeoutError(
              this.group,
              'a command (its client session was evicted meanwhile)',
              this.#o.clock() - start,
              out.handed ? 'unknown' : 'not-applied',
            );
          }
          reRegistered = true;
          continue;
        }
        return this.#decode(out.answer) as R;
      } finally {
        this.#outstanding.delete(seq);
      }
    }
  }

  /** Read the group with `query` at `consistency` (default linearizable) on whichever replica answers first. */
  async query(query: Q, options: { readonly timeoutMs?: number; readonly consistency?: Consistency } = {}): Promise<A> {
    const consistency = options.consistency ?? 'linearizable';
    if (!CONSISTENCIES.includes(consistency)) {
      throw new InvalidArgumentError(
        `raft group ${this.group}: consistency must be 'linearizable', 'lease' or 'stale', got ${JSON.stringify(consistency)}`,
      );
    }
    const start = this.#o.clock();
    const deadline = start + this.#timeout(options);
    const payload = this.#o.codec.encode(query);
    const out = await this.#run('a query', start, deadline, () => ({
      kind: 'query',
      group: this.group,
      timeoutMs: 0,
      consistency,
      payload,
    }));
    if (out.kind === 'expired') throw new TimeoutError(this.group, 'a query', this.#o.clock() - start, 'not-applied');
    return this.#decode(out.answer) as A;
  }

  #decode(a: GroupAnswer): unknown {
    if (a.kind !== 'value') throw new CorruptDataError(`raft group ${this.group}: an answer of kind ${a.kind}`);
    return this.#o.codec.decode(a.payload);
  }

  #timeout(options: { readonly timeoutMs?: number }): number {
    const t = options.timeoutMs ?? this.#o.timeoutMs;
    if (!Number.isFinite(t) || t <= 0) {
      throw new InvalidArgumentError(`raft group ${this.group}: timeoutMs must be a positive number of ms, got ${t}`);
    }
    return t;
  }

  async #ensureSession(start: number, deadline: number): Promise<number> {
    for (;;) {
      if (this.#session !== undefined) return this.#session;
      if (this.#registering === undefined) {
        const p = this.#run('opening a client session', start, deadline, () => ({
          kind: 'register',
          group: this.group,
          timeoutMs: 0,
        })).then((out) => {
          if (out.kind !== 'answer' || out.answer.kind !== 'session') {
            throw new CorruptDataError(`raft group ${this.group}: a register answer without a session`);
          }
          this.#session = out.answer.session;
          return out.answer.session;
        });
        this.#registering = p;
        void p.then(
          () => (this.#registering = undefined),
          () => (this.#registering = undefined),
        );
      }
      try {
        return await this.#registering;
      } catch (err) {
        // Shared with a call whose time ran out first: go on with our own time, if any is left (as #run counts it:
        // less than MIN_WAIT_MS is none, or this loop would retry at one instant of the virtual clock forever).
        if (deadline - this.#o.clock() < MIN_WAIT_MS) {
          if (err instanceof TimeoutError) {
            throw new TimeoutError(this.group, 'opening a client session', this.#o.clock() - start, 'not-applied');
          }
          throw err;
        }
        if (!(err instanceof TimeoutError || err instanceof NoQuorumError)) throw err;
      }
    }
  }

  /**
   * Send the request `make()` builds (again per attempt: a command's lowest outstanding seq may rise) to the
   * candidates in turn until one answers, the answer is final, or the deadline passes.
   */
  async #run(
    what: string,
    start: number,
    deadline: number,
    make: () => GroupRequest,
  ): Promise<{ kind: 'answer'; answer: GroupAnswer } | { kind: 'expired'; handed: boolean }> {
    const o = this.#o;
    let handed = false;
    let attempts = 0;
    let noQuorumAnswers = 0;
    let hint: string | undefined;
    for (let round = 0; ; round++) {
      const tried = new Set<string>();
      const list = o.candidates();
      for (;;) {
        const peer = hint !== undefined && !tried.has(hint) ? hint : list.find((p) => !tried.has(p));
        hint = undefined;
        if (peer === undefined) break;
        tried.add(peer);
        const remaining = deadline - o.clock();
        if (remaining < MIN_WAIT_MS) break;
        const attemptMs = Math.min(remaining, o.attemptTimeoutMs);
        // The replica gets a little less than the transport waits: its typed answer arrives before our timeout.
        const serverMs = Math.max(1, Math.floor(attemptMs * 0.8));
        const req = { ...make(), timeoutMs: serverMs } as GroupRequest;
        const a = await this.#attempt(peer, req, attemptMs);
        if ('final' in a) throw a.final;
        if (a.ok) {
          if (a.answer.leader !== undefined) o.onLeaderHint?.(a.answer.leader);
          return { kind: 'answer', answer: a.answer };
        }
        if (a.expired) return { kind: 'expired', handed };
        handed ||= a.handed;
        attempts++;
        if (a.noQuorum) noQuorumAnswers++;
        hint = a.hint;
        if (hint !== undefined) o.onLeaderHint?.(hint);
      }
      const remaining = deadline - o.clock();
      if (remaining < MIN_WAIT_MS) {
        const waited = o.clock() - start;
        // Every replica asked said it knows no leader: the group has lost its majority (or is electing, slowly).
        if (attempts > 0 && noQuorumAnswers === attempts && !handed) throw new NoQuorumError(this.group, waited);
        throw new TimeoutError(this.group, what, waited, handed ? 'unknown' : 'not-applied');
      }
      const pause = Math.min(remaining, o.retryBaseMs * 2 ** Math.min(round, 20), o.retryMaxMs);
      await new Promise<void>((resolve) => o.timers.setTimeout(resolve, pause));
    }
  }

  async #attempt(peer: string, req: GroupRequest, attemptMs: number): Promise<Attempt> {
    // A register or a query is never "handed over" in the sense that matters: running it twice is harmless.
    const command = req.kind === 'command';
    const served = this.#o.inProcess?.(peer, req);
    let bytes: Uint8Array;
    try {
      if (served !== undefined) return this.#answered(peer, req, await served);
      bytes = await this.#o.request(peer, encodeGroupRequest(req), attemptMs);
    } catch (err) {
      if (err instanceof ClosedError) return { ok: false, final: err };
      if (err instanceof PeerUnavailableError) return next(command && err.outcome === 'unknown');
      if (err instanceof TimeoutError) return next(command && err.outcome === 'unknown');
      if (err instanceof LimitExceededError) {
        // Too many in flight to that node: another may take it. A payload or an answer above a frame: nowhere.
        return err.limit.includes('in flight') ? next(false) : { ok: false, final: err };
      }
      if (err instanceof InvalidArgumentError) return next(false); // not a peer of this node
      return next(command); // a node's handler that threw: it may have proposed first
    }
    let answer: GroupAnswer;
    try {
      answer = decodeGroupAnswer(bytes);
    } catch {
      return next(command);
    }
    return this.#answered(peer, req, answer);
  }

  /** What an answer from `peer` means for the retry loop. */
  #answered(peer: string, req: GroupRequest, answer: GroupAnswer): Attempt {
    const command = req.kind === 'command';
    if (answer.kind === 'session' || answer.kind === 'value') return { ok: true, answer };
    if (answer.kind === 'no-replica') return next(false);
    const hint = answer.leader !== undefined && answer.leader !== peer ? answer.leader : undefined;
    switch (answer.code) {
      case 'SESSION_EXPIRED':
        return { ok: false, handed: false, noQuorum: false, expired: true, hint };
      case 'NOT_LEADER':
        return next(false, false, hint);
      case 'NO_QUORUM':
        return next(false, true, hint);
      case 'TIMEOUT':
        return next(command && answer.outcome !== 'not-applied', false, hint);
      case 'CLOSED':
        // That replica closed under the command (dropped, moved away, its node closing): another holder takes it
        // over with the same (session, seq); the outcome stays unknown unless one of them answers.
        return next(command && answer.outcome !== 'not-applied', false, hint);
      default:
        if (FINAL_CODES.has(answer.code)) return { ok: false, final: this.#typed(peer, answer) };
        // Closed, a failed disk or state machine on that replica: the entry may be in the log; another may serve.
        return next(command, false, hint);
    }
  }

  /** The typed error for a final answer. */
  #typed(peer: string, a: Extract<GroupAnswer, { kind: 'error' }>): RebalancerError {
    if (a.code === 'INVALID_ARGUMENT') return new InvalidArgumentError(a.message);
    if (a.code === 'LIMIT_EXCEEDED') return new LimitExceededError('command bytes', 0, 0, a.message);
    return new RemoteFailedError(peer, a.code, a.message);
  }
}
