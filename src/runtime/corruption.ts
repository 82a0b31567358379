/**
 * Reporting corrupt data without flooding: a runtime re-reads the same unreadable key every round (every tick and
 * every change), and each round would report it again. A CorruptDataError is emitted when it first appears and
 * again only after a round in which it was not seen (it was repaired, then came back).
 */
import type { CorruptDataError } from '../errors.js';

export class CorruptionReports {
  readonly #emit: (error: CorruptDataError) => void;
  #previous = new Set<string>();
  #current = new Set<string>();

  constructor(emit: (error: CorruptDataError) => void) {
    this.#emit = emit;
  }

  /** Report `error` unless the previous complete round (or this one) already did. */
  readonly report = (error: CorruptDataError): void => {
    const id = `${error.key ?? ''}\u0000${error.message}`;
    if (!this.#previous.has(id) && !this.#current.has(id)) this.#emit(error);
    this.#current.add(id);
  };

  /** A round read everything it reads: what it did not report is no longer corrupt. */
  endRound(): void {
    this.#previous = this.#current;
    this.#current = new Set();
  }
}
