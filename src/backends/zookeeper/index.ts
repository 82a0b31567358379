/**
 * `rebalancer/zookeeper`: the store contract on Apache ZooKeeper (3.5+),
 * through node-zookeeper-client. See docs/backends/zookeeper.md.
 */
import type { CommonStoreOptions, Store } from '../../store/contract.js';
import { createZookeeperStore, type ZookeeperStoreOptions } from './store.js';
import { parseZookeeperUrl } from './url.js';

export { ZookeeperStore, createZookeeperStore, type ZookeeperAuth, type ZookeeperStoreOptions } from './store.js';
export { parseZookeeperUrl, type ParsedZookeeperUrl } from './url.js';

/**
 * Open a store from `zk://[user:password@]host:port[,host:port…][/chroot]`
 * (or `zookeeper://…`). User info becomes digest authentication. Options
 * may add anything of ZookeeperStoreOptions (rootPath, acls, auth, …).
 */
export async function openUrl(
  url: string,
  options: CommonStoreOptions & Partial<ZookeeperStoreOptions> = {},
): Promise<Store> {
  const parsed = parseZookeeperUrl(url);
  const auth = [...(options.auth ?? [])];
  if (parsed.digest !== undefined) auth.push({ scheme: 'digest', auth: parsed.digest });
  return createZookeeperStore({
    ...options,
    connectString: parsed.connectString,
    chroot: parsed.chroot ?? options.chroot,
    auth,
  });
}
