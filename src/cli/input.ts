/**
 * What users type on the command line, read one way by every command:
 * numbers, choices and resource names. A value that is not exactly what the
 * option documents is refused (InvalidArgumentError: exit code 2) with the
 * option, the value and what is allowed — never rounded, trimmed or read as
 * something else. (`Number()` alone reads "1e4", " 3000", "0x10" and "" as
 * numbers, so a typo could start a sidecar with a TTL nobody asked for.)
 *
 * Commands declare such options with the `…Flag` functions: the range, the
 * choices and the default are written once and serve the help text and the
 * parsing both (commander calls the parser while it reads the command line,
 * so a bad value is refused before the command's action starts).
 */
import { readFileSync } from 'node:fs';
import { Option } from 'commander';
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

/** The one number parser of the CLI: plain digits (with a fraction when `decimal`), within the range. */
export function parseNumber(flag: string, raw: string, range: NumberRange, kind: 'whole' | 'decimal'): number {
  const n = (kind === 'whole' ? WHOLE : DECIMAL).test(raw) ? Number(raw) : Number.NaN;
  // NaN fails both comparisons.
  if ((range.aboveMin === true ? n > range.min : n >= range.min) && n <= range.max) return n;
  const what =
    kind === 'whole'
      ? `a whole number from ${range.min} to ${range.max} (decimal digits only)`
      : `a number ${span(range)} (decimal digits, optionally with a fraction such as 1.5)`;
  throw new InvalidArgumentError(`${flag} must be ${what}, got ${JSON.stringify(raw)}`);
}

function span(range: NumberRange): string {
  return range.aboveMin === true ? `above ${range.min} and at most ${range.max}` : `from ${range.min} to ${range.max}`;
}

/** One of `choices`, with the closest one suggested for a typo. */
export function parseChoice<T extends string>(flag: string, raw: string, choices: readonly T[]): T {
  if ((choices as readonly string[]).includes(raw)) return raw as T;
  throw new InvalidArgumentError(
    `${flag} must be one of ${choices.join(', ')}, got ${JSON.stringify(raw)}${suggestion(raw, choices)}`,
  );
}

/** `--flag <n>`: a whole number in `range`; the help shows the range (and the default). */
export function integerFlag(flags: string, description: string, range: NumberRange, fallback?: number): Option {
  return flag(flags, `${description} (${range.min}-${range.max})`, fallback, (name, raw) =>
    parseNumber(name, raw, range, 'whole'),
  );
}

/** `--flag <x>`: a decimal number in `range` (a weight). */
export function decimalFlag(flags: string, description: string, range: NumberRange, fallback?: number): Option {
  return flag(flags, `${description} (${span(range)})`, fallback, (name, raw) =>
    parseNumber(name, raw, range, 'decimal'),
  );
}

/** `--flag <name>`: one of `choices`, listed in the help. */
export function choiceFlag<T extends string>(
  flags: string,
  description: string,
  choices: readonly T[],
  fallback?: T,
): Option {
  return flag(flags, `${description}: ${choices.join(' | ')}`, fallback, (name, raw) =>
    parseChoice(name, raw, choices),
  );
}

/**
 * `--flag <x>`: a string that passes a library's own check (which returns what is wrong, or undefined). The rule
 * lives once, in the library; the message names the flag the user typed.
 */
export function checkedFlag(flags: string, description: string, check: (v: unknown) => string | undefined): Option {
  return flag(flags, description, undefined, (name, raw) => {
    const problem = check(raw);
    if (problem !== undefined) throw new InvalidArgumentError(`${name} ${problem}`);
    return raw;
  });
}

function flag<T>(
  flags: string,
  description: string,
  fallback: T | undefined,
  parse: (name: string, raw: string) => T,
): Option {
  const option = new Option(flags, description);
  // Errors name the long flag (`--ttl-ms`), as the user typed it.
  const name = option.long ?? flags;
  option.argParser((raw: string) => parse(name, raw));
  // commander does not pass a default through the parser: it is given parsed.
  return fallback === undefined ? option : option.default(fallback);
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
