/**
 * Message faults for the Raft simulation (issue 13, item 5): a layer on each node's send path, between the node
 * runtime and `Transport.send`. The transport's connections keep bytes in order, as TCP does; Raft must also
 * survive what TCP does not promise across reconnections and what a buggy network or a slow process does: lost,
 * duplicated, late and reordered messages, and partitions that cut one direction only.
 *
 * Per message, in this order and always with the same four draws (so a change of rates does not shift the rest
 * of a seed): lost? duplicated? delayed? by how much? A duplicate goes out once more after a random delay of its
 * own. Delays run on the sending node's clock: a message held back by a node that is then killed never leaves.
 */
import type { Message } from '../raft/messages.js';
import type { Clock } from '../store/contract.js';
import type { Random } from './random.js';

/** The node runtime's send path: `Transport.send`, or this layer in front of it. */
export type SendFn = (peer: string, groupId: string, message: Message) => boolean;

export interface MessageFaultRates {
  /** Probability that a message is lost. */
  readonly loss: number;
  /** Probability that a message is sent twice (the copy after its own random delay). */
  readonly duplicate: number;
  /** Probability that a message is held back for up to maxDelayMs (which reorders it). */
  readonly delay: number;
  readonly maxDelayMs: number;
}

export const NO_FAULTS: MessageFaultRates = { loss: 0, duplicate: 0, delay: 0, maxDelayMs: 0 };

export interface MessageFaultStats {
  sent: number;
  lost: number;
  /** Dropped by a one-way partition. */
  partitioned: number;
  duplicated: number;
  delayed: number;
}

function checkRates(r: MessageFaultRates): MessageFaultRates {
  for (const k of ['loss', 'duplicate', 'delay'] as const) {
    if (!(r[k] >= 0 && r[k] <= 1)) throw new RangeError(`message fault rate ${k} must be in [0, 1], got ${r[k]}`);
  }
  if (!(r.maxDelayMs >= 0)) throw new RangeError(`maxDelayMs must be ≥ 0, got ${r.maxDelayMs}`);
  return r;
}

export class MessageFaults {
  readonly stats: MessageFaultStats = { sent: 0, lost: 0, partitioned: 0, duplicated: 0, delayed: 0 };
  readonly #random: Random;
  #rates: MessageFaultRates;
  /** `from>to`: everything from `from` to `to` is dropped. */
  readonly #cut = new Set<string>();

  constructor(random: Random, rates: Partial<MessageFaultRates> = {}) {
    this.#random = random;
    this.#rates = checkRates({ ...NO_FAULTS, ...rates });
  }

  get rates(): MessageFaultRates {
    return this.#rates;
  }

  /** Change some rates from now on. */
  set(rates: Partial<MessageFaultRates>): void {
    this.#rates = checkRates({ ...this.#rates, ...rates });
  }

  /** Drop everything `from` sends to `to` (one way: `to` still reaches `from`). */
  partition(from: string, to: string): void {
    this.#cut.add(`${from}>${to}`);
  }

  /** Lift one partition (both arguments), or all partitions and every rate (none). */
  heal(from?: string, to?: string): void {
    if (from !== undefined && to !== undefined) {
      this.#cut.delete(`${from}>${to}`);
      return;
    }
    this.#cut.clear();
    this.#rates = NO_FAULTS;
  }

  isPartitioned(from: string, to: string): boolean {
    return this.#cut.has(`${from}>${to}`);
  }

  /**
   * Node `from`'s send path through this layer to `send` (its Transport's). `clock` is the node's: delayed and
   * duplicated messages wait on it. Returns true for a message lost here (lost on the wire: the sender cannot know).
   */
  sender(from: string, send: SendFn, clock: Pick<Clock, 'setTimeout'>): SendFn {
    return (peer, groupId, message) => this.#route(from, peer, clock, () => send(peer, groupId, message));
  }

  /**
   * The same in the shape of the node runtime's `io.send` (RaftNodeIo): `deliver` hands the message to the node's
   * transport, and is called zero, one or two times, now or later.
   */
  ioSend(
    from: string,
    clock: Pick<Clock, 'setTimeout'>,
  ): (to: string, groupId: string, message: Message, deliver: () => void) => void {
    return (to, _groupId, _message, deliver) => {
      this.#route(from, to, clock, () => {
        deliver();
        return true;
      });
    };
  }

  /** One message's fate: always four draws, then lost, or sent (now or late), maybe once more later. */
  #route(from: string, to: string, clock: Pick<Clock, 'setTimeout'>, go: () => boolean): boolean {
    this.stats.sent++;
    const r = this.#rates;
    const lose = this.#random.next() < r.loss;
    const twice = this.#random.next() < r.duplicate;
    const late = this.#random.next() < r.delay;
    const delayMs = this.#random.next() * r.maxDelayMs;
    if (this.#cut.has(`${from}>${to}`)) {
      this.stats.partitioned++;
      return true;
    }
    if (lose) {
      this.stats.lost++;
      return true;
    }
    if (twice) {
      this.stats.duplicated++;
      // The copy's delay: a fraction of the first one's draw, so the copy may overtake it or trail it.
      clock.setTimeout(() => this.#late(from, to, go), delayMs / 2);
    }
    if (!late) return go();
    this.stats.delayed++;
    clock.setTimeout(() => this.#late(from, to, go), delayMs);
    return true;
  }

  /** A held-back message leaves now, unless a partition came up meanwhile. */
  #late(from: string, to: string, go: () => boolean): void {
    if (this.#cut.has(`${from}>${to}`)) {
      this.stats.partitioned++;
      return;
    }
    go();
  }
}
