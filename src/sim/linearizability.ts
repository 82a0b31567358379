/**
 * A linearizability checker for client histories, in the manner of Porcupine (Athalye) — our own code:
 *
 *  - a history is a list of operations, each with the time it was called, the time it returned (absent: the outcome
 *    is unknown — the client timed out or crashed), its input and its output; or a list of call/return events;
 *  - the model is a sequential specification (`Model`): an initial state and a step function that says whether an
 *    operation with this input may have produced this output in this state, and the next state;
 *  - the history is split into independent partitions when the model can (per key for a key-value map: a history is
 *    linearizable iff each key's sub-history is — P-compositionality), checked one at a time;
 *  - each partition is searched with the Wing & Gong algorithm as improved by Lowe (just-in-time linearization over
 *    a doubly linked list of call and return entries, backtracking when a return is reached before its call was
 *    linearized), with a cache of (set of linearized operations, model state) already explored;
 *  - an operation with an unknown outcome may have taken effect at any point after its call, or never: it gets a
 *    return at +∞, any output is accepted, and a partition is done once every operation with a known outcome is
 *    linearized (an operation never applied is one linearized after all the others);
 *  - a step budget (deterministic: the simulator uses it) and an optional wall-clock limit: when either runs out the
 *    answer is `unknown`, never `ok`.
 *
 * Times are numbers in any one unit (virtual or wall milliseconds, nanoseconds): only their order matters. Two
 * operations overlap when one is called at or before the time the other returns (equal times count as concurrent,
 * so coarse clocks cause no false alarm). Histories from several processes need comparable clocks; widen each
 * interval by the clock-skew bound when recording if they are not.
 */
import { InvalidArgumentError } from '../errors.js';
import { OptionReader } from '../options.js';

/** The output given to `Model.step` for an operation whose outcome is unknown: any output is possible. */
export const UNKNOWN: unique symbol = Symbol('unknown outcome');
export type Unknown = typeof UNKNOWN;

/** One client operation. */
export interface Operation<I, O> {
  /** Who issued it (for messages). */
  readonly client?: string | number | undefined;
  readonly input: I;
  readonly callTime: number;
  /** When the answer arrived; absent (undefined) when the outcome is unknown. */
  readonly returnTime?: number | undefined;
  /** The answer (ignored when `returnTime` is absent). */
  readonly output?: O | undefined;
}

/** A call or a return, for histories recorded as events. `id` pairs a return with its call. */
export type HistoryEvent<I, O> =
  | {
      readonly type: 'call';
      readonly id: string | number;
      readonly client?: string | number | undefined;
      readonly time: number;
      readonly input: I;
    }
  | { readonly type: 'return'; readonly id: string | number; readonly time: number; readonly output: O };

export type StepResult<S> = { readonly ok: true; readonly state: S } | { readonly ok: false };

/**
 * A sequential specification. `step` must be pure: it is called many times with the same state during the search.
 */
export interface Model<S, I, O> {
  init(): S;
  /** May `input` have produced `output` in `state` (any output when `output` is UNKNOWN), and the state after it. */
  step(state: S, input: I, output: O | Unknown): StepResult<S>;
  /** Independent sub-histories (each checked on its own from `init()`); default: the whole history. */
  partition?(ops: readonly Operation<I, O>[]): readonly (readonly Operation<I, O>[])[];
  /**
   * Remove operations of one partition that cannot change the answer, before the search (optional, and it must be
   * sound: the partition with them is linearizable iff the partition without them is). Unknown-outcome operations
   * are what makes the search expensive — each one may take effect anywhere after its call — so a model should drop
   * those it can prove harmless: an unknown read, or an unknown write nobody observed.
   */
  simplify?(ops: readonly Operation<I, O>[]): readonly Operation<I, O>[];
  /** State equality for the cache; default `Object.is` (sound: unequal-looking states are only explored twice). */
  equal?(a: S, b: S): boolean;
  /** A 32-bit hash consistent with `equal` (equal states, equal hashes); default 0. */
  hash?(state: S): number;
  /** How an operation reads in a failure message; default JSON. */
  describeOperation?(input: I, output: O | Unknown): string;
  describeState?(state: S): string;
  /** What a partition is, for a failure message (e.g. `key "x"`); default its number. */
  describePartition?(ops: readonly Operation<I, O>[]): string;
}

export interface CheckOptions {
  /**
   * The most search steps (one step: one entry of the history visited) in one partition; when a partition needs
   * more, the answer is `unknown`. Default 2 000 000 (about 1–4 s of an exhaustive search on this machine kind, see
   * `npm run bench -- linearizability`). Deterministic: use it in simulations.
   */
  readonly maxStepsPerPartition?: number | undefined;
  /** Wall-clock limit for the whole check, in milliseconds; default none. When it passes, the answer is `unknown`. */
  readonly timeLimitMs?: number | undefined;
  /**
   * A bound on the memory of a partition's cache of (linearized set, state) pairs, in bytes; default 256 MiB. An
   * entry is counted as ⌈ops/32⌉ × 4 + 96 bytes (its set and bookkeeping); the model's states are not counted (the
   * ready models' states are strings, mostly shared with the history). When full, the search goes on without
   * remembering more pairs: still correct, possibly slower (the step budget still bounds it). The cache is dropped
   * after each partition.
   */
  readonly maxCacheBytes?: number | undefined;
  /** The clock for `timeLimitMs`; default `performance.now`. */
  readonly now?: (() => number) | undefined;
}

export interface CheckStats {
  /** Partitions in the history. */
  readonly partitions: number;
  /** Partitions fully checked. */
  readonly partitionsChecked: number;
  /** Search steps over all partitions. */
  readonly steps: number;
  /** Largest cache of one partition. */
  readonly maxCacheEntries: number;
}

/** Why a history is not linearizable, as far as the search got in the partition that failed. */
export interface IllegalExplanation<I, O> {
  readonly partitionIndex: number;
  /** The partition as the model describes it (`key "x", partition i of n`), or `partition i of n`. */
  readonly partitionName: string;
  /** The failing partition's operations (after `Model.simplify`). */
  readonly partition: readonly Operation<I, O>[];
  /** The longest sequence of operations the search could linearize (in linearization order). */
  readonly linearized: readonly Operation<I, O>[];
  /** The model state after `linearized`, described. */
  readonly state: string;
  /** The operation whose return came before any order could place it. */
  readonly blocked: Operation<I, O>;
  /** The operations that could have come next at that point (called before `blocked` returned), `blocked` among them. */
  readonly candidates: readonly Operation<I, O>[];
}

export type CheckResult<I, O> =
  | { readonly result: 'ok'; readonly stats: CheckStats }
  | {
      readonly result: 'illegal';
      readonly stats: CheckStats;
      readonly explanation: IllegalExplanation<I, O>;
      /** Readable in a test failure. */
      readonly message: string;
    }
  | {
      readonly result: 'unknown';
      readonly stats: CheckStats;
      readonly reason: 'step-budget' | 'time-limit';
      /** The partitions not decided. */
      readonly undecidedPartitions: readonly number[];
      readonly message: string;
    };

const DEFAULT_MAX_STEPS = 2_000_000;
const DEFAULT_MAX_CACHE_BYTES = 256 * 1024 * 1024;
/** Bookkeeping per cache entry besides its bit set (object, array slot, typed-array header), in bytes. */
const CACHE_ENTRY_OVERHEAD_BYTES = 96;
/** How many steps between two looks at the wall clock. */
const CLOCK_EVERY_STEPS = 1024;
/** At most this many operations listed per section of a failure message. */
const MESSAGE_OPS = 12;

/** Check a history given as operations. */
export function checkOperations<S, I, O>(
  model: Model<S, I, O>,
  history: readonly Operation<I, O>[],
  options: CheckOptions = {},
): CheckResult<I, O> {
  const r = new OptionReader(options, 'checkOperations options');
  const maxSteps = r.integer('maxStepsPerPartition', DEFAULT_MAX_STEPS, { min: 1 });
  const timeLimitMs = r.optional<number>('timeLimitMs', (v) =>
    typeof v === 'number' && v >= 0 && !Number.isNaN(v) ? undefined : `must be a number of milliseconds ≥ 0`,
  );
  const maxCacheBytes = r.integer('maxCacheBytes', DEFAULT_MAX_CACHE_BYTES, { min: 0 });
  const now = r.fn<() => number>('now', () => performance.now());
  r.done();
  if (!Array.isArray(history)) throw new InvalidArgumentError('checkOperations: the history must be an array');
  history.forEach(validateOperation);

  const deadline = timeLimitMs === undefined ? Number.POSITIVE_INFINITY : now() + timeLimitMs;
  const partitions = model.partition === undefined ? [history] : model.partition(history);
  let steps = 0;
  let checked = 0;
  let maxCacheSeen = 0;
  const undecided: number[] = [];
  let reason: 'step-budget' | 'time-limit' | undefined;
  const stats = (): CheckStats => ({
    partitions: partitions.length,
    partitionsChecked: checked,
    steps,
    maxCacheEntries: maxCacheSeen,
  });
  for (let p = 0; p < partitions.length; p++) {
    if (reason === 'time-limit' || (timeLimitMs !== undefined && now() > deadline)) {
      reason = 'time-limit';
      undecided.push(p);
      continue;
    }
    const ops = model.simplify === undefined ? partitions[p]! : model.simplify(partitions[p]!);
    const out = searchPartition(model, ops, p, { maxSteps, maxCacheBytes, deadline, now });
    steps += out.steps;
    maxCacheSeen = Math.max(maxCacheSeen, out.cacheEntries);
    if (out.kind === 'ok') {
      checked++;
    } else if (out.kind === 'illegal') {
      checked++;
      const where = `partition ${p + 1} of ${partitions.length}`;
      const explanation: IllegalExplanation<I, O> = {
        ...out.explanation,
        partitionName: model.describePartition === undefined ? where : `${model.describePartition(ops)}, ${where}`,
      };
      return { result: 'illegal', stats: stats(), explanation, message: explain(model, explanation) };
    } else {
      reason = out.kind;
      undecided.push(p);
    }
  }
  if (reason === undefined) return { result: 'ok', stats: stats() };
  return {
    result: 'unknown',
    stats: stats(),
    reason,
    undecidedPartitions: undecided,
    message:
      `linearizability unknown: ${undecided.length} of ${partitions.length} partition(s) not decided ` +
      (reason === 'time-limit'
        ? `within the time limit`
        : `within ${maxSteps} steps each (raise maxStepsPerPartition, or record shorter histories with fewer ` +
          `concurrent operations)`) +
      `: ${undecided
        .slice(0, MESSAGE_OPS)
        .map((i) => {
          const ops = partitions[i]!;
          const name = model.describePartition === undefined ? `partition ${i + 1}` : model.describePartition(ops);
          const unknown = ops.filter((o) => o.returnTime === undefined).length;
          return `${name} (${ops.length} operations, ${unknown} of unknown outcome)`;
        })
        .join(', ')}${undecided.length > MESSAGE_OPS ? ', …' : ''}`,
  };
}

/** Check a history given as call and return events (a call without a return has an unknown outcome). */
export function checkEvents<S, I, O>(
  model: Model<S, I, O>,
  events: readonly HistoryEvent<I, O>[],
  options: CheckOptions = {},
): CheckResult<I, O> {
  return checkOperations(model, operationsFromEvents(events), options);
}

/**
 * Pair call and return events (by id) into operations, in the order of the calls. The events may come in any order
 * (e.g. one process's events after another's); times order them.
 */
export function operationsFromEvents<I, O>(events: readonly HistoryEvent<I, O>[]): Operation<I, O>[] {
  if (!Array.isArray(events)) throw new InvalidArgumentError('the history events must be an array');
  const calls = new Map<string | number, { ev: HistoryEvent<I, O> & { type: 'call' }; ret?: HistoryEvent<I, O> }>();
  const returns: [number, HistoryEvent<I, O> & { type: 'return' }][] = [];
  for (const [i, ev] of events.entries()) {
    if (ev === null || typeof ev !== 'object') throw new InvalidArgumentError(`history event ${i} is not an object`);
    if (typeof ev.time !== 'number' || !Number.isFinite(ev.time)) {
      throw new InvalidArgumentError(`history event ${i} (id ${String(ev.id)}) has no finite time: ${String(ev.time)}`);
    }
    if (ev.type === 'call') {
      if (calls.has(ev.id)) {
        throw new InvalidArgumentError(
          `history event ${i}: id ${String(ev.id)} is called twice; give each call its own id`,
        );
      }
      calls.set(ev.id, { ev });
    } else if (ev.type === 'return') {
      returns.push([i, ev]);
    } else {
      throw new InvalidArgumentError(
        `history event ${i} has type ${JSON.stringify((ev as { type: unknown }).type)}; expected "call" or "return"`,
      );
    }
  }
  for (const [i, ev] of returns) {
    const c = calls.get(ev.id);
    if (c === undefined)
      throw new InvalidArgumentError(`history event ${i}: a return for id ${String(ev.id)} has no call`);
    if (c.ret !== undefined) throw new InvalidArgumentError(`history event ${i}: id ${String(ev.id)} returns twice`);
    if (ev.time < c.ev.time) {
      throw new InvalidArgumentError(
        `history event ${i}: id ${String(ev.id)} returns at ${ev.time}, before its call at ${c.ev.time}`,
      );
    }
    c.ret = ev;
  }
  return [...calls.values()]
    .sort((a, b) => a.ev.time - b.ev.time)
    .map(({ ev, ret }) => ({
      ...(ev.client === undefined ? {} : { client: ev.client }),
      input: ev.input,
      callTime: ev.time,
      ...(ret !== undefined && ret.type === 'return' ? { returnTime: ret.time, output: ret.output } : {}),
    }));
}

/**
 * Records a history as it happens: `const op = h.call(client, input)`, then `op.ok(output)` when the answer
 * arrives, `op.unknown()` when the outcome is unknown (timeout, crash: the operation may or may not have taken
 * effect), or `op.failed()` when it certainly did not take effect (it is dropped from the history). An operation
 * never finished counts as unknown. `now` is the clock (virtual time in a simulation).
 */
export class HistoryRecorder<I, O> {
  readonly #now: () => number;
  readonly #ops: ({ op: Operation<I, O>; dropped: boolean } | undefined)[] = [];

  constructor(now: () => number) {
    this.#now = now;
  }

  call(client: string | number | undefined, input: I): { ok(output: O): void; unknown(): void; failed(): void } {
    const index = this.#ops.length;
    const callTime = this.#now();
    const entry = { op: { client, input, callTime } as Operation<I, O>, dropped: false };
    this.#ops.push(entry);
    let done = false;
    const finish = (): boolean => {
      if (done) return false;
      done = true;
      return true;
    };
    return {
      ok: (output) => {
        if (finish()) this.#ops[index] = { op: { ...entry.op, returnTime: this.#now(), output }, dropped: false };
      },
      unknown: () => void finish(),
      failed: () => {
        if (finish()) this.#ops[index] = { op: entry.op, dropped: true };
      },
    };
  }

  /** The history so far (operations still pending have an unknown outcome). */
  operations(): Operation<I, O>[] {
    const out: Operation<I, O>[] = [];
    for (const e of this.#ops) if (e !== undefined && !e.dropped) out.push(e.op);
    return out;
  }
}

// ---- the search ------------------------------------------------------------------------------------------------

function validateOperation(op: Operation<unknown, unknown>, i: number): void {
  if (op === null || typeof op !== 'object') throw new InvalidArgumentError(`history operation ${i} is not an object`);
  if (typeof op.callTime !== 'number' || !Number.isFinite(op.callTime)) {
    throw new InvalidArgumentError(`history operation ${i} has no finite callTime: ${String(op.callTime)}`);
  }
  if (op.returnTime !== undefined) {
    if (typeof op.returnTime !== 'number' || !Number.isFinite(op.returnTime)) {
      throw new InvalidArgumentError(
        `history operation ${i} has returnTime ${String(op.returnTime)}; give a finite number, or leave it out ` +
          `when the outcome is unknown`,
      );
    }
    if (op.returnTime < op.callTime) {
      throw new InvalidArgumentError(
        `history operation ${i} returns at ${op.returnTime}, before its call at ${op.callTime}`,
      );
    }
  }
}

interface Limits {
  readonly maxSteps: number;
  readonly maxCacheBytes: number;
  readonly deadline: number;
  readonly now: () => number;
}

type PartitionOutcome<I, O> =
  | { kind: 'ok'; steps: number; cacheEntries: number }
  | {
      kind: 'illegal';
      steps: number;
      cacheEntries: number;
      explanation: Omit<IllegalExplanation<I, O>, 'partitionName'>;
    }
  | { kind: 'step-budget' | 'time-limit'; steps: number; cacheEntries: number };

/** The (linearized set, state) pairs already explored, bucketed by a hash of both. */
class Cache<S> {
  readonly #buckets = new Map<number, { bits: Uint32Array; state: S }[]>();
  readonly #equal: (a: S, b: S) => boolean;
  readonly #limit: number;
  size = 0;

  constructor(equal: (a: S, b: S) => boolean, limit: number) {
    this.#equal = equal;
    this.#limit = limit;
  }

  /** True when (bits, state) was there; otherwise adds it (room permitting) and returns false. */
  seenOrAdd(hash: number, bits: Uint32Array, state: S): boolean {
    let bucket = this.#buckets.get(hash);
    if (bucket !== undefined) {
      for (const e of bucket) if (sameBits(e.bits, bits) && this.#equal(e.state, state)) return true;
    }
    if (this.size >= this.#limit) return false;
    if (bucket === undefined) {
      bucket = [];
      this.#buckets.set(hash, bucket);
    }
    bucket.push({ bits: bits.slice(), state });
    this.size++;
    return false;
  }
}

function sameBits(a: Uint32Array, b: Uint32Array): boolean {
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** murmur3's finaliser: a well-mixed 32-bit value per operation index (Zobrist hashing of the linearized set). */
function mix32(x: number): number {
  x = Math.imul(x ^ (x >>> 16), 0x85ebca6b);
  x = Math.imul(x ^ (x >>> 13), 0xc2b2ae35);
  return (x ^ (x >>> 16)) >>> 0;
}

function searchPartition<S, I, O>(
  model: Model<S, I, O>,
  ops: readonly Operation<I, O>[],
  partitionIndex: number,
  limits: Limits,
): PartitionOutcome<I, O> {
  const n = ops.length;
  // Entries 1..2n: a call and a return per operation; 0 is the head of the list, 2n + 1 its tail.
  const HEAD = 0;
  const TAIL = 2 * n + 1;
  const order: { entry: number; time: number; isCall: boolean; op: number }[] = [];
  let knownRemaining = 0;
  for (let i = 0; i < n; i++) {
    const op = ops[i]!;
    const known = op.returnTime !== undefined;
    if (known) knownRemaining++;
    order.push({ entry: 0, time: op.callTime, isCall: true, op: i });
    order.push({ entry: 0, time: known ? op.returnTime! : Number.POSITIVE_INFINITY, isCall: false, op: i });
  }
  // By time; at equal times calls first (the operations then overlap: no false alarm from a coarse clock).
  order.sort((a, b) => a.time - b.time || (a.isCall === b.isCall ? a.op - b.op : a.isCall ? -1 : 1));
  const next = new Int32Array(TAIL + 1);
  const prev = new Int32Array(TAIL + 1);
  const opOf = new Int32Array(TAIL + 1);
  const isCall = new Uint8Array(TAIL + 1);
  const callOf = new Int32Array(n);
  const returnOf = new Int32Array(n);
  for (let k = 0; k < order.length; k++) {
    const e = k + 1;
    const o = order[k]!;
    opOf[e] = o.op;
    isCall[e] = o.isCall ? 1 : 0;
    if (o.isCall) callOf[o.op] = e;
    else returnOf[o.op] = e;
  }
  for (let e = 0; e <= TAIL; e++) {
    next[e] = e + 1;
    prev[e] = e - 1;
  }
  const known = new Uint8Array(n);
  const outputs: (O | Unknown)[] = new Array<O | Unknown>(n);
  for (let i = 0; i < n; i++) {
    known[i] = ops[i]!.returnTime !== undefined ? 1 : 0;
    outputs[i] = known[i] === 1 ? (ops[i]!.output as O) : UNKNOWN;
  }
  const zobrist = new Uint32Array(n);
  for (let i = 0; i < n; i++) zobrist[i] = mix32(i + 0x9e3779b9);
  const bits = new Uint32Array(Math.max(1, Math.ceil(n / 32)));
  let bitsHash = 0;
  const hashState = model.hash === undefined ? (): number => 0 : model.hash.bind(model);
  const equal = model.equal === undefined ? Object.is : model.equal.bind(model);
  const cache = new Cache<S>(equal, Math.floor(limits.maxCacheBytes / (bits.length * 4 + CACHE_ENTRY_OVERHEAD_BYTES)));

  const lift = (call: number): void => {
    const ret = returnOf[opOf[call]!]!;
    next[prev[call]!] = next[call]!;
    prev[next[call]!] = prev[call]!;
    next[prev[ret]!] = next[ret]!;
    prev[next[ret]!] = prev[ret]!;
  };
  const unlift = (call: number): void => {
    const ret = returnOf[opOf[call]!]!;
    prev[next[ret]!] = ret;
    next[prev[ret]!] = ret;
    prev[next[call]!] = call;
    next[prev[call]!] = call;
  };

  // The search stack: the call entries linearized so far, and the state before each.
  const stackEntries = new Int32Array(n);
  const stackStates: S[] = [];
  let depth = 0;
  let state = model.init();
  let steps = 0;
  let best: { depth: number; ops: number[]; state: S; blocked: number; candidates: number[] } | undefined;

  let entry = next[HEAD]!;
  while (knownRemaining > 0) {
    steps++;
    if (steps > limits.maxSteps) return { kind: 'step-budget', steps: steps - 1, cacheEntries: cache.size };
    if (steps % CLOCK_EVERY_STEPS === 0 && limits.deadline < Infinity && limits.now() > limits.deadline) {
      return { kind: 'time-limit', steps, cacheEntries: cache.size };
    }
    if (entry === TAIL) {
      // Cannot happen while a known operation remains (its return is in the list); kept as a guard.
      throw new Error('linearizability search ran off the end of the history');
    }
    if (isCall[entry] === 1) {
      const op = opOf[entry]!;
      const r = model.step(state, ops[op]!.input, outputs[op]!);
      if (r.ok) {
        const word = op >>> 5;
        const mask = 1 << (op & 31);
        bits[word] = bits[word]! | mask;
        const h = (bitsHash ^ zobrist[op]!) >>> 0;
        const key = (h ^ Math.imul(hashState(r.state) | 0, 0x9e3779b1)) >>> 0;
        if (!cache.seenOrAdd(key, bits, r.state)) {
          bitsHash = h;
          stackEntries[depth] = entry;
          stackStates[depth] = state;
          depth++;
          state = r.state;
          lift(entry);
          if (known[op] === 1) knownRemaining--;
          entry = next[HEAD]!;
          continue;
        }
        bits[word] = bits[word]! & ~mask;
      }
      entry = next[entry]!;
    } else {
      // A return whose call is not linearized: nothing linearized so far can be extended. Backtrack.
      if (best === undefined || depth > best.depth) {
        const candidates: number[] = [];
        for (let e = next[HEAD]!; e !== entry; e = next[e]!) if (isCall[e] === 1) candidates.push(opOf[e]!);
        const linearized: number[] = [];
        for (let d = 0; d < depth; d++) linearized.push(opOf[stackEntries[d]!]!);
        best = { depth, ops: linearized, state, blocked: opOf[entry]!, candidates };
      }
      if (depth === 0) {
        const b = best;
        return {
          kind: 'illegal',
          steps,
          cacheEntries: cache.size,
          explanation: {
            partitionIndex,
            partition: ops,
            linearized: b.ops.map((i) => ops[i]!),
            state: describeState(model, b.state),
            blocked: ops[b.blocked]!,
            candidates: b.candidates.map((i) => ops[i]!),
          },
        };
      }
      depth--;
      const call = stackEntries[depth]!;
      const op = opOf[call]!;
      state = stackStates[depth]!;
      stackStates.length = depth;
      bits[op >>> 5] = bits[op >>> 5]! & ~(1 << (op & 31));
      bitsHash = (bitsHash ^ zobrist[op]!) >>> 0;
      unlift(call);
      if (known[op] === 1) knownRemaining++;
      entry = next[call]!;
    }
  }
  return { kind: 'ok', steps, cacheEntries: cache.size };
}

// ---- messages --------------------------------------------------------------------------------------------------

function describeState<S, I, O>(model: Model<S, I, O>, state: S): string {
  return model.describeState === undefined ? json(state) : model.describeState(state);
}

function describeOp<S, I, O>(model: Model<S, I, O>, op: Operation<I, O>): string {
  const output: O | Unknown = op.returnTime === undefined ? UNKNOWN : (op.output as O);
  const what =
    model.describeOperation === undefined
      ? `${json(op.input)} → ${output === UNKNOWN ? '?' : json(output)}`
      : model.describeOperation(op.input, output);
  const client = op.client === undefined ? '' : `client ${String(op.client)}, `;
  const until = op.returnTime === undefined ? '? (outcome unknown)' : String(op.returnTime);
  return `${what}  [${client}${op.callTime}–${until}]`;
}

function json(v: unknown): string {
  if (v === undefined) return 'undefined';
  try {
    return JSON.stringify(v) ?? String(v);
  } catch {
    return String(v);
  }
}

function explain<S, I, O>(model: Model<S, I, O>, x: IllegalExplanation<I, O>): string {
  const list = (ops: readonly Operation<I, O>[], numbered: boolean): string[] => {
    const shown = ops.length > MESSAGE_OPS ? ops.slice(ops.length - MESSAGE_OPS) : ops;
    const first = ops.length - shown.length;
    const lines = shown.map((op, i) => `    ${numbered ? `${first + i + 1}. ` : '- '}${describeOp(model, op)}`);
    if (first > 0) lines.unshift(`    … ${first} earlier operation(s)`);
    return lines;
  };
  return [
    `not linearizable: ${x.partitionName} (${x.partition.length} operations)`,
    `  longest linearizable prefix found (${x.linearized.length} operations):`,
    ...(x.linearized.length === 0 ? ['    (none)'] : list(x.linearized, true)),
    `  state after it: ${x.state}`,
    `  no order of what may come next places this operation before it returned:`,
    `    ${describeOp(model, x.blocked)}`,
    `  operations that could come next (called before it returned):`,
    ...list(x.candidates, false),
  ].join('\n');
}
