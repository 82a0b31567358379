/**
 * The Lua scripts of the Redis backend: loaded from the `.lua` files next to
 * this module (the build copies them into dist), each prefixed with the
 * shared prelude `lib.lua`, and registered with ioredis' defineCommand, which
 * sends EVALSHA and falls back to EVAL when the server answers NOSCRIPT (a
 * restarted server, SCRIPT FLUSH, a new connection).
 */
import { readFile } from 'node:fs/promises';
import type { Redis } from 'ioredis';

export const SCRIPT_NAMES = [
  'open_session',
  'keep_alive',
  'revoke',
  'reap',
  'get',
  'range',
  'txn',
  'repair_rev',
] as const;
export type ScriptName = (typeof SCRIPT_NAMES)[number];

/** Number of KEYS every script declares (see lib.lua). */
export const SCRIPT_KEY_COUNT = 5;

export type ScriptArg = string | Buffer | number;
type ScriptCall = (...args: ScriptArg[]) => Promise<unknown>;

let sources: Promise<Readonly<Record<ScriptName, string>>> | undefined;

/** The full text of every script (prelude + body), read once per process. */
export function scriptSources(): Promise<Readonly<Record<ScriptName, string>>> {
  sources ??= (async () => {
    const dir = new URL('./scripts/', import.meta.url);
    const lib = await readFile(new URL('lib.lua', dir), 'utf8');
    const out: Partial<Record<ScriptName, string>> = {};
    for (const name of SCRIPT_NAMES) {
      out[name] = `${lib}\n${await readFile(new URL(`${name}.lua`, dir), 'utf8')}`;
    }
    return out as Record<ScriptName, string>;
  })();
  // Let a later store retry if the files could not be read (e.g. a broken install).
  sources.catch(() => {
    sources = undefined;
  });
  return sources;
}

const commandName = (name: ScriptName): string => `rebalancer_${name}`;

/** Register every script on a connection. */
export function defineScripts(redis: Redis, texts: Readonly<Record<ScriptName, string>>): void {
  for (const name of SCRIPT_NAMES) {
    redis.defineCommand(commandName(name), { lua: texts[name], numberOfKeys: SCRIPT_KEY_COUNT });
  }
}

/** Run a registered script; bulk replies come back as Buffers. */
export function callScript(redis: Redis, name: ScriptName, args: readonly ScriptArg[]): Promise<unknown> {
  const fn = (redis as unknown as Record<string, ScriptCall | undefined>)[`${commandName(name)}Buffer`];
  if (fn === undefined) return Promise.reject(new Error(`script ${name} is not registered`));
  return fn.apply(redis, [...args]);
}
