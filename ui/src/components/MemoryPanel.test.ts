import { afterEach, describe, expect, it, vi } from 'vitest';
import { render, screen } from '@testing-library/svelte';
import MemoryPanel from './MemoryPanel.svelte';
import { fakeEngine, json } from '../test/engine';
import type { Instance } from '../lib/types';

const GIB = 1024 ** 3;

function instance(name: string, status: Instance['status'], footprint: Instance['footprint']): Instance {
  return {
    name, status, created: 1,
    options: { auto_restart: true, max_restarts: 3, restart_delay: 5, on_demand_start: true, idle_timeout: 0, backend_type: 'llama_cpp', backend_options: {} },
    health: status === 'running' ? 'ready' : null, restarts: 0, pid: null, started_at: null, requests: 0, in_flight: 0,
    last_request_at: null, tokens_prompt: 0, tokens_completion: 0, tokens_per_second: null, queued: 0, footprint,
  };
}

function system(unified: boolean) {
  return json({
    os: { name: 'x', version: '1', kernel: 'k', arch: 'x86_64' },
    cpu: { model: 'cpu', cores: 2, threads: 2 },
    memory: { total_bytes: 32 * GIB, used_bytes: 8 * GIB, available_bytes: 24 * GIB },
    accelerators: [{ vendor: 'NVIDIA', name: 'RTX 4090', source: 'nvidia-smi', memory_total_bytes: 24 * GIB, memory_used_bytes: 4 * GIB, memory_free_bytes: 20 * GIB, unified }],
    probes: [], engine: { version: '0.1.0', pid: 1, uptime_seconds: 1 },
  });
}

describe('MemoryPanel', () => {
  afterEach(() => vi.unstubAllGlobals());

  it('puts each running instance in the pools it uses, measured over estimated', async () => {
    fakeEngine({ 'GET /api/v1/system': () => system(false) });
    const instances = [
      instance('gpu-model', 'running', { measured: { ram_bytes: 1 * GIB, gpu_bytes: 6 * GIB }, estimated: { ram_bytes: 0, gpu_bytes: 9 * GIB } }),
      instance('cpu-model', 'running', { estimated: { ram_bytes: 3 * GIB, gpu_bytes: 0 } }),
      instance('stopped', 'stopped', { estimated: { ram_bytes: 5 * GIB, gpu_bytes: 0 } }),
    ];
    render(MemoryPanel, { instances });
    const gpu = await screen.findByTestId('pool-gpu');
    expect(gpu.textContent).toContain('RTX 4090');
    expect(gpu.textContent).toContain('20.0 GiB free of 24.0 GiB');
    expect(gpu.textContent).toContain('gpu-model');
    expect(gpu.textContent).toContain('6.0 GiB');
    expect(gpu.textContent).not.toContain('cpu-model');
    const ram = screen.getByTestId('pool-ram');
    expect(ram.textContent).toContain('cpu-model');
    expect(ram.textContent).toContain('3.0 GiB (est.)');
    expect(ram.textContent).toContain('gpu-model');
    expect(ram.textContent).not.toContain('stopped');
  });

  it('counts unified memory once', async () => {
    fakeEngine({ 'GET /api/v1/system': () => system(true) });
    render(MemoryPanel, { instances: [instance('mlx', 'running', { measured: { ram_bytes: 2 * GIB, gpu_bytes: 3 * GIB } })] });
    const pool = await screen.findByTestId('pool-unified');
    expect(pool.textContent).toContain('5.0 GiB');
    expect(screen.queryByTestId('pool-gpu')).toBeNull();
  });
});
