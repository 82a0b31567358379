import { InvalidArgumentError } from '../../errors.js';
import type { CommonStoreOptions, Store } from '../../store/contract.js';
import { MemoryStore } from './store.js';

/** `memory:` opens a private in-memory store (useful for tests and the CLI's dry runs). */
export function openUrl(url: string, options: CommonStoreOptions = {}): Promise<Store> {
  if (!/^memory:\/{0,2}$/i.test(url))
    throw new InvalidArgumentError(`memory store URL takes no address: use "memory:", got ${url}`);
  return Promise.resolve(new MemoryStore(options));
}
