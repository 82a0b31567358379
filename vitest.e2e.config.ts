import { defineConfig } from 'vitest/config';

// End-to-end group scenarios with real node processes on every backend (`npm run test:groups-real`).
// Not yet part of `npm test`: see the note in test/groups/real-backends.e2e.ts.
export default defineConfig({
  test: {
    include: ['test/groups/**/*.e2e.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    pool: 'forks',
    poolOptions: { forks: { maxForks: 2, minForks: 1 } },
  },
});
