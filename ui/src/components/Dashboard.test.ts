import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { render, screen, waitFor } from '@testing-library/svelte';
import Dashboard from './Dashboard.svelte';
import { instances } from '../lib/instances.svelte';
import { fakeEngine, json } from '../test/engine';
import { backendsFixture, library } from '../test/models.fixture';

describe('Dashboard, empty', () => {
  beforeEach(() => {
    instances.byName = {};
    instances.loaded = true;
  });
  afterEach(() => vi.unstubAllGlobals());

  it('guides the first run: backends found, install advice, models found', async () => {
    fakeEngine({ 'GET /api/v1/backends': () => json(backendsFixture), 'GET /api/v1/models': () => json(library) });
    render(Dashboard, { schema: null });
    const backends = await screen.findByTestId('step-backends');
    expect(backends.textContent).toContain('llama.cpp (b6000)');
    expect(backends.textContent).toContain('vLLM is not installed');
    // Corral does not install vLLM: no button, only the advice.
    expect(screen.queryByTestId('install-start-vllm')).toBeNull();
    expect(backends.textContent).toContain('pip install vllm');
    const models = await screen.findByTestId('step-models');
    expect(models.textContent).toContain('3 models found');
    expect(screen.getByRole('link', { name: 'Models' }).getAttribute('href')).toBe('#/models');
    expect(screen.getByRole('link', { name: 'Chat' }).getAttribute('href')).toBe('#/chat');
  });

  it('suggests a small download when there is no model', async () => {
    fakeEngine({ 'GET /api/v1/backends': () => json(backendsFixture), 'GET /api/v1/models': () => json([]) });
    render(Dashboard, { schema: null });
    const link = await screen.findByTestId('download-starter');
    expect(link.getAttribute('href')).toBe('#/models?download=ggml-org%2FSmolLM2-135M-Instruct-GGUF%3AQ8_0');
  });

  it('still guides on an engine without /backends and /models', async () => {
    fakeEngine({});
    render(Dashboard, { schema: null });
    expect(await screen.findByText(/Pick a GGUF model file/)).toBeTruthy();
    expect(screen.getByText('Run your first model')).toBeTruthy();
    expect(screen.queryByTestId('step-backends')).toBeNull();
    expect(screen.queryByTestId('step-models')).toBeNull();
    await waitFor(() => expect(screen.getByRole('link', { name: 'Add a model' })).toBeTruthy());
  });
});
