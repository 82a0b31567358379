/**
 * `rebalancer/etcd`: the coordination-store contract on etcd v3 (driver:
 * etcd3). See docs/backends/etcd.md for the data layout and guarantees.
 */
import type { CommonStoreOptions, Store } from '../../store/contract.js';
import { EtcdStore, type EtcdStoreOptions } from './store.js';

export { EtcdStore, type EtcdClientOptions, type EtcdStoreOptions } from './store.js';
export { parseEtcdUrl, type ParsedEtcdUrl } from './url.js';

/** Connect, and create or check the namespace's layout version. */
export async function createEtcdStore(options: EtcdStoreOptions): Promise<EtcdStore> {
  const store = new EtcdStore(options);
  try {
    await store.init();
  } catch (err) {
    await store.close();
    throw err;
  }
  return store;
}

/** `etcd://host:port[,host:port…]` or `etcds://[user:password@]host:port…` (TLS). */
export function openUrl(
  url: string,
  options: CommonStoreOptions & Omit<EtcdStoreOptions, 'url' | 'hosts'> = {},
): Promise<Store> {
  return createEtcdStore({ ...options, url });
}
