/**
 * The names every protocol shares: names of groups, clusters (and fleets), and
 * node ids. Checked wherever they enter (options, CLI, keys), with one message.
 */
import { InvalidArgumentError } from '../errors.js';

export const NAME_RE = /^[A-Za-z0-9._-]{1,64}$/;
export const NODE_ID_RE = /^[A-Za-z0-9._:@-]{1,128}$/;

/** A group, cluster or fleet name: 1–64 of A-Z a-z 0-9 . _ - (it is part of every key). */
export function validateName(name: unknown, what = 'group name'): string {
  if (typeof name !== 'string' || !NAME_RE.test(name)) {
    throw new InvalidArgumentError(
      `${what} ${JSON.stringify(name)} is invalid: use 1-64 characters of A-Z a-z 0-9 . _ -`,
    );
  }
  return name;
}

/** A node id: 1–128 of A-Z a-z 0-9 . _ : @ - (e.g. a hostname or pod name). */
export function validateNodeId(id: unknown): string {
  if (typeof id !== 'string' || !NODE_ID_RE.test(id)) {
    throw new InvalidArgumentError(
      `node id ${JSON.stringify(id)} is invalid: use 1-128 characters of A-Z a-z 0-9 . _ : @ - (e.g. a hostname or pod name)`,
    );
  }
  return id;
}
