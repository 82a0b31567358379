import { InvalidArgumentError } from '../../errors.js';
import type { CommonStoreOptions, Store } from '../../store/contract.js';

// Placeholder until the redis adapter lands.
export function openUrl(_url: string, _options?: CommonStoreOptions): Promise<Store> {
  return Promise.reject(new InvalidArgumentError('the redis backend is not implemented yet'));
}
