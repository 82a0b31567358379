/**
 * What users type on the command line, read one way by every command:
 * numbers, choices and resource names. A value that is not exactly what the
 * option documents is refused (InvalidArgumentError: exit code 2) with the
 * option, the value and what is allowed — never rounded, trimmed or read as
 * something else. (`Number()` alone reads "1e4", " 3000", "0x10" and "" as
 * numbers, so a typo could start a sidecar with a TTL nobody asked for.)
 */
import { readFileSync } from 'node:fs';
import { InvalidArgumentError } from '../errors.js';
import { suggestion } from '../options.js';

export interface NumberRange {
  readonly min: number;
  readonly max: number;
  /** The minimum itself is not allowed (a weight must be above 0). */
  readonly aboveMin?: boolean | undefined;
}

/** Plain decimal digits: no sign, exponent, hex prefix, separator or white space. */
const WHOLE = /^[0-9]+$/;
/** Digits with an optional fraction (`1`, `0.5`); nothing else. */
const DECIMAL = /^[0-9]+(\.[0-9]+)?$/;

/** A whole number written as plain decimal digits, within the option's range. */
export function integerOption(flag: string, raw: string, range: NumberRange): number;
export function integerOption(flag: string, raw: string | undefined, range: NumberRange): number | undefined;
export function integerOption(flag: string, raw: string | undefined, range: NumberRange): number | undefined {
  return raw === undefined ? undefined : parseNumber(flag, raw, range, 'whole');
}

/** A number written as decimal digits with an optional fraction (e.g. a weight of 0.5), within the range. */
export function decimalOption(flag: string, raw: string, range: NumberRange): number;
export function decimalOption(flag: string, raw: string | undefined, range: NumberRange): number | undefined;
export function decimalOption(flag: string, raw: string | undefined, range: NumberRange): number | undefined {
  return raw === undefined ? undefined : parseNumber(flag, raw, range, 'decimal');
}

function parseNumber(flag: string, raw: string, range: NumberRange, kind: 'whole' | 'decimal'): number {
  const n = (kind === 'whole' ? WHOLE : DECIMAL).test(raw) ? Number(raw) : Number.NaN;
  const inRange = (range.aboveMin === true ? n > range.min : n >= range.min) && n <= range.max;
  if (!inRange) {
    const what =
      kind === 'whole'
        ? `a whole number from ${range.min} to ${range.max} (decimal digits only)`
        : `a number ${range.aboveMin === true ? 'above' : 'from'} ${range.min} ${range.aboveMin === true ? 'and at most' : 'to'} ${range.max} (decimal digits, optionally with a fraction such as 1.5)`;
    throw new InvalidArgumentError(`${flag} must be ${what}, got ${JSON.stringify(raw)}`);
  }
  return n;
}

/** One of `choices`, with the closest one suggested for a typo. */
export function choiceOption<T extends string>(flag: string, raw: string, choices: readonly T[]): T;
export function choiceOption<T extends string>(
  flag: string,
  raw: string | undefined,
  choices: readonly T[],
): T | undefined;
export function choiceOption<T extends string>(
  flag: string,
  raw: string | undefined,
  choices: readonly T[],
): T | undefined {
  if (raw === undefined) return undefined;
  if ((choices as readonly string[]).includes(raw)) return raw as T;
  throw new InvalidArgumentError(
    `${flag} must be one of ${choices.join(', ')}, got ${JSON.stringify(raw)}${suggestion(raw, choices)}`,
  );
}

/**
 * A value checked by a library's own check (which returns what is wrong, or undefined), reported under the flag's
 * name: the rule lives once, in the library, and the message names what the user typed.
 */
export function checkedOption(flag: string, raw: string, check: (v: unknown) => string | undefined): string;
export function checkedOption(
  flag: string,
  raw: string | undefined,
  check: (v: unknown) => string | undefined,
): string | undefined;
export function checkedOption(
  flag: string,
  raw: string | undefined,
  check: (v: unknown) => string | undefined,
): string | undefined {
  if (raw === undefined) return undefined;
  const problem = check(raw);
  if (problem !== undefined) throw new InvalidArgumentError(`${flag} ${problem}`);
  return raw;
}

/**
 * Resource names: the arguments, or one per line from standard input when the only argument is `-`. One rule for
 * both sources, so that a name means the same typed or piped: white space around a name is trimmed (a trailing
 * space or a CRLF line end is never part of it), and a name that is empty after trimming is refused rather than
 * skipped — `""`, `"  "` or a blank line usually means an empty variable upstream, and skipping it would hide that.
 * The final newline of the input ends its last line; it does not start an empty one. The other rules (length,
 * control characters) are the registry's, checked before anything is written.
 */
export function resourceNames(
  args: readonly string[],
  readStdin: () => string = () => readFileSync(0, 'utf8'),
): string[] {
  if (args.length === 1 && args[0] === '-') {
    const text = readStdin();
    if (text === '') return [];
    const lines = (text.endsWith('\n') ? text.slice(0, -1) : text).split('\n');
    return lines.map((line, i) => resourceName(line, `on line ${i + 1} of standard input`));
  }
  if (args.includes('-')) {
    throw new InvalidArgumentError('"-" (read the names from standard input) must be the only name given');
  }
  return args.map((arg, i) => resourceName(arg, `in argument ${i + 1}`));
}

function resourceName(raw: string, where: string): string {
  const name = raw.trim();
  if (name === '') {
    throw new InvalidArgumentError(
      `the resource name ${where} is empty${raw === '' ? '' : ' after trimming white space'}; give a name or leave it out`,
    );
  }
  return name;
}
