/// <reference types="vitest/config" />
import { defineConfig } from 'vite';
import { svelte } from '@sveltejs/vite-plugin-svelte';
import { svelteTesting } from '@testing-library/svelte/vite';

// `npm run dev` proxies the API to a running `corral serve` (CORRAL_URL, default the engine's
// default address), so the UI can be worked on with hot reload against real instances. The
// engine refuses state-changing requests from pages of other origins, so the proxied requests
// name the engine's own origin, as the embedded UI's do.
const engine = process.env.CORRAL_URL ?? 'http://127.0.0.1:8080';
const sameOrigin = { target: engine, changeOrigin: true, headers: { origin: engine } };

export default defineConfig({
  plugins: [svelte(), svelteTesting()],
  build: { target: 'es2022', sourcemap: false, chunkSizeWarningLimit: 400 },
  server: {
    proxy: {
      '/api': sameOrigin,
      '/v1': sameOrigin,
    },
  },
  test: {
    environment: 'jsdom',
    include: ['src/**/*.test.ts'],
    setupFiles: ['src/test/setup.ts'],
  },
});
