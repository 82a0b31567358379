/** Option validation of `rebalancer/rabbitmq`: mistakes are typed errors before anything connects. */
import { describe, expect, it } from 'vitest';
import { InvalidArgumentError, LimitExceededError } from '../../src/errors.js';
import { MemoryStore } from '../../src/backends/memory/store.js';
import { ConsumerGroup } from '../../src/integrations/rabbitmq/index.js';
import { withHeartbeat } from '../../src/integrations/rabbitmq/connection.js';
import { resolveConsumerGroupOptions } from '../../src/integrations/rabbitmq/options.js';
import { openStore } from '../../src/store/open.js';

const memory = new MemoryStore();
/** The RabbitMQ half of the options, read by the same reader as the group's. */
function resolveConsumeOptions(o: object) {
  return resolveConsumerGroupOptions({ store: memory, group: 'g', node: { id: 'n' }, ...o }, () => undefined).rabbit;
}

const base = {
  connection: 'amqp://guest:guest@127.0.0.1:5672',
  queues: ['q1'],
  onMessage: () => undefined,
};

describe('rebalancer/rabbitmq options', () => {
  it('has defaults', () => {
    const r = resolveConsumeOptions({ ...base });
    expect(r).toMatchObject({ prefetch: 10, onError: 'requeue', exclusive: true, heartbeatS: 10 });
  });

  it.each([
    ['a non-AMQP URL', { connection: 'http://x' }],
    ['a malformed URL', { connection: 'not a url' }],
    ['no connection', { connection: 42 }],
    ['no onMessage', { onMessage: undefined }],
    ['an empty queue list', { queues: [] }],
    ['an empty queue name', { queues: [''] }],
    ['a queue source without list()', { queues: { intervalMs: 5 } }],
    ['prefetch 0', { prefetch: 0 }],
    ['a fractional prefetch', { prefetch: 1.5 }],
    ['an unknown onError', { onError: 'drop' }],
    ['reconnect.maxMs below initialMs', { reconnect: { initialMs: 500, maxMs: 100 } }],
    ['a single queue name instead of a list', { queues: 'q1' }],
    ['a misspelt option', { prefech: 5 }],
    ['a misspelt group option', { sesionTtlMs: 5000 }],
  ])('rejects %s with InvalidArgumentError', (_what, patch) => {
    expect(() => resolveConsumeOptions({ ...base, ...patch })).toThrow(InvalidArgumentError);
  });

  it('rejects a queue name above 255 bytes with LimitExceededError', () => {
    expect(() => resolveConsumeOptions({ ...base, queues: ['é'.repeat(128)] })).toThrow(LimitExceededError);
  });

  it('validates the group options too, in the constructor (nothing connects)', async () => {
    const store = await openStore('memory:');
    try {
      expect(() => new ConsumerGroup({ ...base, store, group: 'bad name!', node: { id: 'n' } })).toThrow(
        InvalidArgumentError,
      );
      expect(() => new ConsumerGroup({ ...base, store, group: 'g', node: { id: 'n' }, sessionTtlMs: -1 })).toThrow(
        InvalidArgumentError,
      );
    } finally {
      await store.close();
    }
  });

  it('adds a heartbeat only when the URL has none', () => {
    expect(withHeartbeat('amqp://u:p@h:5672/v', 10)).toBe('amqp://u:p@h:5672/v?heartbeat=10');
    expect(withHeartbeat('amqp://h?heartbeat=3', 10)).toBe('amqp://h?heartbeat=3');
  });
});
