import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    // Real servers and child processes: keep parallelism modest on 2 cores.
    pool: 'forks',
    poolOptions: { forks: { maxForks: 3, minForks: 1 } },
    reporters: ['default'],
  },
});
