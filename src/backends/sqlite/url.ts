import { statSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { InvalidArgumentError } from '../../errors.js';

const FORMS = 'use sqlite:PATH (relative or absolute, e.g. sqlite:./rebalancer.db) or sqlite:///absolute/path.db';

/**
 * The database path named by a `sqlite:` URL, resolved against the current
 * directory. `sqlite:PATH` takes the path literally (no percent-decoding, so
 * any file name works); `sqlite:///abs/path` is a URL and is percent-decoded.
 */
export function parseSqliteUrl(url: string): string {
  if (typeof url !== 'string') throw new InvalidArgumentError(`sqlite store URL must be a string: ${FORMS}`);
  const m = /^sqlite:(.*)$/is.exec(url);
  const rest = m?.[1];
  if (rest === undefined) throw new InvalidArgumentError(`not a sqlite store URL: ${JSON.stringify(url)}; ${FORMS}`);
  let path: string;
  if (rest.startsWith('//')) {
    if (!rest.startsWith('///')) {
      throw new InvalidArgumentError(
        `sqlite store URL ${JSON.stringify(url)} names a host; the database is a local file: ${FORMS}`,
      );
    }
    if (/[?#]/.test(rest)) {
      throw new InvalidArgumentError(
        `sqlite store URL ${JSON.stringify(url)} has a query or fragment; pass options to createSqliteStore instead`,
      );
    }
    try {
      path = decodeURIComponent(rest.slice(2));
    } catch (cause) {
      throw new InvalidArgumentError(`sqlite store URL ${JSON.stringify(url)} has a bad percent-escape; ${FORMS}`, {
        cause,
      });
    }
  } else {
    path = rest;
  }
  return validateDatabasePath(path, url);
}

/** Check a database path (from a URL or options) and make it absolute. */
export function validateDatabasePath(path: string, shownAs: string = path): string {
  if (typeof path !== 'string' || path.length === 0) {
    throw new InvalidArgumentError(`sqlite store needs a database file path: ${FORMS}`);
  }
  if (path.includes('\0'))
    throw new InvalidArgumentError(`sqlite database path ${JSON.stringify(shownAs)} contains NUL`);
  if (path === ':memory:' || /^file:/i.test(path) || /mode=memory/i.test(path)) {
    throw new InvalidArgumentError(
      `sqlite store ${JSON.stringify(shownAs)}: an in-memory database cannot be shared with other processes, ` +
        'which is the point of a coordination store; use a file (a file on a tmpfs such as /dev/shm is fine for tests), ' +
        'or the memory: store for a single process',
    );
  }
  const abs = resolve(path);
  const dir = dirname(abs);
  const dirStat = statOrThrow(dir, shownAs);
  if (dirStat === undefined) {
    throw new InvalidArgumentError(
      `sqlite database directory ${dir} does not exist (from ${JSON.stringify(shownAs)}); create it first`,
    );
  }
  if (!dirStat.isDirectory()) {
    throw new InvalidArgumentError(`sqlite database path ${abs}: ${dir} is not a directory`);
  }
  const fileStat = statOrThrow(abs, shownAs);
  if (fileStat !== undefined && !fileStat.isFile()) {
    throw new InvalidArgumentError(`sqlite database path ${abs} exists but is not a regular file`);
  }
  return abs;
}

function statOrThrow(path: string, shownAs: string): ReturnType<typeof statSync> {
  try {
    return statSync(path, { throwIfNoEntry: false });
  } catch (cause) {
    throw new InvalidArgumentError(
      `sqlite database path ${JSON.stringify(shownAs)}: cannot access ${path} (${FS_PROBLEMS[(cause as { code?: string }).code ?? ''] ?? 'see the cause'}); ` +
        'use a path this process may read and write',
      { cause },
    );
  }
}

/** Why a path cannot be looked at, in words. */
const FS_PROBLEMS: Readonly<Record<string, string>> = {
  EACCES: 'permission denied',
  EPERM: 'permission denied',
  ENOTDIR: 'a part of the path is not a directory',
  ELOOP: 'too many symbolic links',
  ENAMETOOLONG: 'the path is too long',
};
