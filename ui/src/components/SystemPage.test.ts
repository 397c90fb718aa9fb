import { afterEach, describe, expect, it, vi } from 'vitest';
import { render, screen } from '@testing-library/svelte';
import SystemPage from './SystemPage.svelte';
import { fakeEngine, json } from '../test/engine';

const text = (body: string) => () => new Response(body, { status: 200, headers: { 'Content-Type': 'text/plain' } });

describe('SystemPage', () => {
  afterEach(() => vi.unstubAllGlobals());

  it('shows the accelerators, memory and engine from /system', async () => {
    fakeEngine({
      'GET /api/v1/system': () =>
        json({
          os: { name: 'Debian GNU/Linux', version: '12', kernel: '6.1.0', arch: 'x86_64' },
          cpu: { model: 'AMD Ryzen 9 7950X', cores: 16, threads: 32 },
          memory: { total_bytes: 64 * 1024 ** 3, used_bytes: 16 * 1024 ** 3, available_bytes: 48 * 1024 ** 3 },
          accelerators: [
            {
              vendor: 'NVIDIA', name: 'GeForce RTX 4090', source: 'nvidia-smi', driver: '550.54',
              memory_total_bytes: 24 * 1024 ** 3, memory_used_bytes: 6 * 1024 ** 3, memory_free_bytes: 18 * 1024 ** 3,
              utilization_percent: 37, temperature_c: 61, unified: false,
            },
          ],
          probes: [
            { name: 'nvidia', ok: true, present: true, detail: 'NVML 12.4', millis: 41 },
            { name: 'amd', ok: true, present: false, detail: 'no GPU bound to amdgpu', millis: 2 },
            { name: 'llama-server', ok: false, present: false, error: 'timed out after 10 s', millis: 10000 },
          ],
          engine: { version: '0.1.0', pid: 4242, uptime_seconds: 3725, llama_server: '/usr/bin/llama-server' },
        }),
      'GET /api/v1/version': text('Version: 0.1.0\nCommit: abc\nBuild Time: now\n'),
      'GET /api/v1/server/version': text('version: 6000 (abcdef)\n'),
      'GET /api/v1/server/devices': text('Available devices:\n  CUDA0: NVIDIA GeForce RTX 4090\n'),
    });
    render(SystemPage);
    expect(await screen.findByText('GeForce RTX 4090')).toBeTruthy();
    expect(screen.getByText(/6\.0 GiB of 24\.0 GiB/)).toBeTruthy();
    expect(screen.getByText(/37% busy/)).toBeTruthy();
    // The engine serves this page, so the address it shows is the page's own.
    expect(screen.getByText(location.origin)).toBeTruthy();
    expect(screen.getByText(/16\.0 GiB of 64\.0 GiB used/)).toBeTruthy();
    expect(screen.getByText(/no GPU bound to amdgpu/)).toBeTruthy();
    expect(screen.getByText(/timed out after 10 s/)).toBeTruthy();
    expect(screen.getByText('1 failed')).toBeTruthy();
    expect(screen.getByText('1h 2m')).toBeTruthy();
    expect(screen.getByText('/usr/bin/llama-server')).toBeTruthy();
    expect(await screen.findByText(/CUDA0/)).toBeTruthy();
  });

  it('lists the backends, which installed one Corral made, and offers to install a missing one', async () => {
    fakeEngine({
      'GET /api/v1/version': text('Version: 0.1.0\n'),
      'GET /api/v1/server/version': text('version: 6000 (abcdef)\n'),
      'GET /api/v1/server/devices': text('Available devices:\n'),
      'GET /api/v1/backends': () =>
        json([
          { backend: 'llama_cpp', installed: true, managed: true, command: 'llama-server', path: '/data/backends/llama.cpp/bin/llama-server', version: 'b6000', devices: ['CPU'], error: null, install: null },
          { backend: 'mlx_lm', installed: false, managed: false, command: 'mlx_lm.server', devices: [], error: 'not found on PATH', install: { summary: 'pip install mlx-lm', commands: ['pip install mlx-lm'] } },
        ]),
      'GET /api/v1/backends/mlx/install': () => json({ error: 'not_found', details: 'none' }, 404),
    });
    render(SystemPage);
    const llama = await screen.findByTestId('backend-llama_cpp');
    expect(llama.textContent).toContain('b6000 · installed by Corral · runs on CPU');
    expect(llama.textContent).toContain('/data/backends/llama.cpp/bin/llama-server');
    const mlx = screen.getByTestId('backend-mlx_lm');
    expect(mlx.textContent).toContain('mlx-lm is not installed');
    expect(screen.getByRole('button', { name: 'Install mlx-lm' })).toBeTruthy();
  });

  it('falls back to llama-server\'s own report on an engine without /system', async () => {
    fakeEngine({
      'GET /api/v1/version': text('Version: 0.1.0\n'),
      'GET /api/v1/server/version': text('version: 6000 (abcdef)\n'),
      'GET /api/v1/server/devices': () =>
        json({ error: 'server_command_failed', details: '`llama-server --list-devices` could not be run: No such file or directory' }, 500),
    });
    render(SystemPage);
    expect(await screen.findByText('version: 6000 (abcdef)')).toBeTruthy();
    expect(await screen.findByText(/could not be run/)).toBeTruthy();
    expect(screen.getByText('0.1.0')).toBeTruthy();
    expect(screen.queryByText('Accelerators')).toBeNull();
  });
});
