/**
 * The resource registry of a group: add, remove and list resources. Used by
 * operators (CLI), by applications, and by the coordinator's resource source.
 */
import { stringList } from '../../options.js';
import { checkGroupSize, encode, GroupKeys, validateResourceName } from '../../protocol/groups/keys.js';
import { NO_MUTANTS, type Mutants } from '../../protocol/mutants.js';
import type { Compare, Op, Store } from '../../store/contract.js';

const BATCH = 120;

/**
 * Write registry changes in batches; each batch also rewrites the group's catalog key, whose mod revision the
 * coordinator compares instead of re-reading every resource name (see io.ts, CoordinatorReader).
 */
async function writeBatches(
  store: Store,
  keys: GroupKeys,
  ops: readonly Op[],
  guard?: Compare,
  onProgress?: (written: number, total: number) => void,
): Promise<boolean> {
  for (let i = 0; i < ops.length; i += BATCH) {
    const then: Op[] = [...ops.slice(i, i + BATCH), { op: 'put', key: keys.catalog, value: encode({}) }];
    const r = await store.txn({ compare: guard === undefined ? [] : [guard], then });
    if (!r.succeeded) return false;
    onProgress?.(Math.min(ops.length, i + BATCH), ops.length);
  }
  return true;
}

/** Options of GroupAdmin.add and remove. */
export interface RegistryChangeOptions {
  /**
   * Called after each batch written (about 120 names per transaction) with how many of the new names are written
   * so far and how many there are: a caller adding many thousands can show progress.
   */
  readonly onProgress?: ((written: number, total: number) => void) | undefined;
}

export async function listResources(store: Store, keys: GroupKeys): Promise<string[]> {
  const { kvs } = await store.range(keys.resources);
  return kvs.map((kv) => kv.key.slice(keys.resources.length));
}

/** Bring the registry in step with `names` (the coordinator's resource source; a bad list changes nothing). */
export async function syncRegistry(
  store: Store,
  keys: GroupKeys,
  names: unknown,
  guard?: Compare,
): Promise<{ added: number; removed: number }> {
  const wanted = new Set<string>();
  for (const n of stringList(names, "the resource source's list")) wanted.add(validateResourceName(n));
  checkGroupSize(keys.root.slice(2, -1), wanted.size);
  const existing = new Set(await listResources(store, keys));
  const ops: Op[] = [];
  let added = 0;
  let removed = 0;
  for (const n of wanted) {
    if (!existing.has(n)) {
      ops.push({ op: 'put', key: keys.resource(n), value: encode({}) });
      added++;
    }
  }
  for (const n of existing) {
    if (!wanted.has(n)) {
      ops.push({ op: 'delete', key: keys.resource(n) });
      removed++;
    }
  }
  await writeBatches(store, keys, ops, guard);
  return { added, removed };
}

/** Operate a group's resource registry. */
export class GroupAdmin {
  readonly group: string;
  readonly #store: Store;
  readonly #keys: GroupKeys;
  readonly #mutants: Mutants;

  /** `internals` is for the simulator only. */
  constructor(store: Store, group: string, internals: { readonly mutants?: Mutants } = {}) {
    this.#keys = new GroupKeys(group);
    this.group = group;
    this.#store = store;
    this.#mutants = internals.mutants ?? NO_MUTANTS;
  }

  /**
   * Register resources (validated first: on any invalid name nothing is written). Returns how many were new. A
   * single string is refused: pass a list (`add(['queue-1'])`). A group holds at most MAX_GROUP_RESOURCES
   * (100 000): an add that would exceed it is refused with LimitExceededError before anything is written.
   */
  async add(
    names: Iterable<string>,
    options: RegistryChangeOptions = {},
  ): Promise<{ added: number; existing: number }> {
    const list = [...new Set(stringList(names, 'GroupAdmin.add(names)').map((n) => validateResourceName(n)))];
    checkGroupSize(this.group, list.length);
    const existing = new Set(await listResources(this.#store, this.#keys));
    const fresh = list.filter((n) => !existing.has(n));
    checkGroupSize(this.group, existing.size + fresh.length);
    await writeBatches(
      this.#store,
      this.#keys,
      fresh.map((n) => ({ op: 'put', key: this.#keys.resource(n), value: encode({}) })),
      undefined,
      options.onProgress,
    );
    return { added: fresh.length, existing: list.length - fresh.length };
  }

  /** Unregister resources; their owners stop them and release their locks. */
  async remove(
    names: Iterable<string>,
    options: RegistryChangeOptions = {},
  ): Promise<{ removed: number; missing: number }> {
    const list = [...new Set(stringList(names, 'GroupAdmin.remove(names)').map((n) => validateResourceName(n)))];
    const existing = new Set(await listResources(this.#store, this.#keys));
    const present = list.filter((n) => existing.has(n));
    const ops: Op[] = present.map((n) => ({ op: 'delete', key: this.#keys.resource(n) }));
    // Never delete a lock here: its holder may still be running (see docs/protocol/groups.md, "The re-added name").
    if (this.#mutants.has('delete-lock-on-remove'))
      for (const n of present) ops.push({ op: 'delete', key: this.#keys.heldKey(n) });
    await writeBatches(this.#store, this.#keys, ops, undefined, options.onProgress);
    return { removed: present.length, missing: list.length - present.length };
  }

  list(): Promise<string[]> {
    return listResources(this.#store, this.#keys);
  }
}

/**
 * The groups of a namespace with their member and resource counts. Reads the whole `g/` prefix: an operator's
 * command, not something to call in a loop.
 */
export async function listGroups(store: Store): Promise<{ group: string; members: number; resources: number }[]> {
  const { kvs } = await store.range('g/');
  const out = new Map<string, { group: string; members: number; resources: number }>();
  for (const kv of kvs) {
    const rest = kv.key.slice(2);
    const slash = rest.indexOf('/');
    if (slash <= 0) continue;
    const group = rest.slice(0, slash);
    const kind = rest.slice(slash + 1).split('/')[0];
    const g = out.get(group) ?? { group, members: 0, resources: 0 };
    if (kind === 'members') g.members++;
    else if (kind === 'resources') g.resources++;
    out.set(group, g);
  }
  return [...out.values()].sort((a, b) => (a.group < b.group ? -1 : a.group > b.group ? 1 : 0));
}
