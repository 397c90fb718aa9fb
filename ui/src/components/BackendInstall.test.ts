import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { fireEvent, render, screen, waitFor } from '@testing-library/svelte';
import BackendInstall from './BackendInstall.svelte';
import Dashboard from './Dashboard.svelte';
import { applyEvent, instances } from '../lib/instances.svelte';
import { installs } from '../lib/installs.svelte';
import type { BackendInfo, InstallJob } from '../lib/models';
import { fakeEngine, json } from '../test/engine';

const missing = (backend: BackendInfo['backend']): BackendInfo => ({
  backend,
  installed: false,
  managed: false,
  command: backend === 'mlx_lm' ? 'mlx_lm.server' : 'llama-server',
  devices: [],
  error: 'not found on PATH',
  install: { summary: 'Install it with pip.', commands: ['pip install mlx-lm'] },
});

const job = (change: Partial<InstallJob>): InstallJob => ({
  id: 'job-1',
  backend: 'mlx_lm',
  state: 'running',
  step: 'creating the virtualenv',
  progress: null,
  log_tail: [],
  log_path: '/data/backends/mlx-lm/install.log',
  error: null,
  started_at: '2026-12-02T06:00:00Z',
  finished_at: null,
  path: null,
  ...change,
});

/** The engine's event stream delivering one `backend_install` event. */
const event = (j: InstallJob) => applyEvent('backend_install', JSON.stringify(j));

const notFound = () => json({ error: 'not_found', details: 'no install since the engine started' }, 404);

describe('BackendInstall', () => {
  beforeEach(() => {
    installs.byBackend = {};
    installs.completed = 0;
    instances.byName = {};
    instances.loaded = true;
  });
  afterEach(() => vi.unstubAllGlobals());

  it('installs mlx-lm from the guided start, following its events until it shows as installed', async () => {
    let done = false;
    const engine = fakeEngine({
      'GET /api/v1/backends': () =>
        json([done ? { ...missing('mlx_lm'), installed: true, managed: true, version: '0.28.0', path: '/data/venv/bin/mlx_lm.server', error: null, install: null } : missing('mlx_lm')]),
      'GET /api/v1/models': () => json([]),
      'GET /api/v1/backends/mlx/install': notFound,
      'POST /api/v1/backends/mlx/install': () => json(job({}), 202),
    });
    render(Dashboard, { schema: null });
    await fireEvent.click(await screen.findByRole('button', { name: 'Install mlx-lm' }));
    expect(engine.seen.some((r) => r.method === 'POST' && r.path === '/api/v1/backends/mlx/install' && r.body === undefined)).toBe(true);
    expect((await screen.findByTestId('install-step-mlx_lm')).textContent).toContain('creating the virtualenv');

    event(job({ step: 'installing mlx-lm', progress: 0.4, log_tail: ['Collecting mlx-lm', 'Downloading mlx-0.29.whl'] }));
    await waitFor(() => expect(screen.getByTestId('install-step-mlx_lm').textContent).toBe('installing mlx-lm (40%)'));
    expect((screen.getByRole('progressbar', { name: 'Installing mlx-lm' }) as HTMLProgressElement).value).toBeCloseTo(0.4);
    expect(screen.getByTestId('install-log-mlx_lm').textContent).toContain('Downloading mlx-0.29.whl');
    expect(screen.getByRole('button', { name: 'Cancel' })).toBeTruthy();

    done = true;
    event(job({ state: 'completed', step: 'done', progress: 1, path: '/data/venv/bin/mlx_lm.server', finished_at: '2026-12-02T06:01:00Z' }));
    // The completed install has the list read again: mlx-lm is now installed, by Corral.
    const step = await screen.findByTestId('step-backends');
    await waitFor(() => expect(step.textContent).toContain('MLX (0.28.0), installed by Corral'));
    expect(screen.queryByTestId('install-mlx_lm')).toBeNull();
  });

  it('shows a running build it did not start, and cancels it', async () => {
    const engine = fakeEngine({
      'GET /api/v1/backends/llama-cpp/install': () => json(job({ backend: 'llama_cpp', step: 'building 37%', progress: 0.37, log_tail: ['[37/100] Building CXX object'] })),
      'DELETE /api/v1/backends/llama-cpp/install': () =>
        json(job({ backend: 'llama_cpp', state: 'cancelled', step: 'building 37%', finished_at: '2026-12-02T06:03:00Z' })),
    });
    render(BackendInstall, { backend: missing('llama_cpp') });
    expect((await screen.findByTestId('install-step-llama_cpp')).textContent).toBe('building 37% (37%)');
    await fireEvent.click(screen.getByRole('button', { name: 'Cancel' }));
    expect(await screen.findByText('The install was cancelled.')).toBeTruthy();
    expect(engine.seen.some((r) => r.method === 'DELETE' && r.path === '/api/v1/backends/llama-cpp/install')).toBe(true);
    expect(screen.getByRole('button', { name: 'Try again' })).toBeTruthy();
  });

  it('offers llama.cpp as a build from source that takes minutes, and shows why it failed', async () => {
    fakeEngine({
      'GET /api/v1/backends/llama-cpp/install': notFound,
      'POST /api/v1/backends/llama-cpp/install': () => json(job({ backend: 'llama_cpp', step: 'configuring' }), 202),
    });
    render(BackendInstall, { backend: missing('llama_cpp') });
    expect(screen.getByText(/This takes several minutes/)).toBeTruthy();
    await fireEvent.click(screen.getByRole('button', { name: 'Build from source' }));
    await screen.findByTestId('install-step-llama_cpp');
    event(job({ backend: 'llama_cpp', state: 'failed', step: 'configuring', error: 'cmake exited with status 1', log_tail: ['CMake Error: no C++ compiler'] }));
    expect((await screen.findByRole('alert')).textContent).toContain('cmake exited with status 1');
    // A failure opens the log: its last lines say why.
    expect(screen.getByTestId('install-log-llama_cpp').closest('details')?.open).toBe(true);
    expect(screen.queryByRole('button', { name: 'Cancel' })).toBeNull();
    expect(screen.getByRole('button', { name: 'Try again' })).toBeTruthy();
  });

  it('says what the engine answered when an install cannot start', async () => {
    fakeEngine({
      'GET /api/v1/backends/mlx/install': notFound,
      'POST /api/v1/backends/mlx/install': () => json({ error: 'install_running', details: 'an install of mlx-lm is running' }, 409),
    });
    render(BackendInstall, { backend: missing('mlx_lm') });
    await fireEvent.click(screen.getByRole('button', { name: 'Install mlx-lm' }));
    expect((await screen.findByRole('alert')).textContent).toBe('an install of mlx-lm is running');
  });

  it('gives vLLM only the advice', () => {
    fakeEngine({});
    render(BackendInstall, { backend: { ...missing('vllm'), install: { summary: 'vLLM needs an NVIDIA GPU.', commands: ['pip install vllm'] } } });
    expect(screen.queryByRole('button')).toBeNull();
    expect(screen.getByText('pip install vllm')).toBeTruthy();
    expect(screen.getByText('How to install it')).toBeTruthy();
  });
});
