import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    // Real servers: starting RabbitMQ alone takes seconds.
    testTimeout: 60_000,
    hookTimeout: 120_000,
  },
});
