import { afterEach, describe, expect, it, vi } from 'vitest';
import { fireEvent, render, screen } from '@testing-library/svelte';
import { fakeEngine, json } from '../test/engine';
import InstanceCard from './InstanceCard.svelte';
import type { Instance } from '../lib/types';

const base: Instance = {
  name: 'qwen',
  status: 'running',
  created: 1,
  options: {
    auto_restart: true, max_restarts: 3, restart_delay: 5, on_demand_start: true, idle_timeout: 0,
    backend_type: 'llama_cpp', backend_options: { model: '/models/qwen3-8b.gguf', port: 8123 },
  },
  health: 'ready', restarts: 2, pid: 9, started_at: Math.floor(Date.now() / 1000) - 3700,
  requests: 1500, in_flight: 1, last_request_at: null, tokens_prompt: 0, tokens_completion: 0,
  tokens_per_second: 33.33, queued: 0, footprint: {},
};

const text = () => screen.getByTestId('instance-card-qwen').textContent ?? '';

describe('InstanceCard', () => {
  it('shows what runs and how it is doing', () => {
    render(InstanceCard, { instance: base, backendLabel: 'llama.cpp', onDelete: () => {} });
    expect(screen.getByTestId('instance-status-qwen').textContent).toBe('running');
    expect(text()).toContain('qwen3-8b.gguf');
    expect(text()).toContain(':8123');
    expect(text()).toMatch(/1h 1m/);
    expect(text()).toContain('1.5k');
    expect(text()).toContain('(1 now)');
    expect(text()).toContain('33.3');
    expect(screen.getByTestId('stop-qwen')).toBeTruthy();
    expect(screen.queryByTestId('start-qwen')).toBeNull();
    // No resource figures from an engine that does not measure them.
    expect(text()).not.toContain('RAM');
  });

  it('adds CPU, RAM and VRAM when the engine reports them', () => {
    const instance = { ...base, resources: { cpu_percent: 151.2, rss_bytes: 3 * 1024 ** 3, vram_bytes: 5.5 * 1024 ** 3 } };
    render(InstanceCard, { instance, backendLabel: 'llama.cpp', onDelete: () => {} });
    expect(text()).toContain('151%');
    expect(text()).toContain('3.0 GiB');
    expect(text()).toContain('5.5 GiB');
  });

  it('shows queued requests and the memory the scheduler expects, measured over estimated', () => {
    const estimated = { ram_bytes: 1024 ** 3, gpu_bytes: 0 };
    const measured = { ram_bytes: 1024 ** 3, gpu_bytes: 2 * 1024 ** 3 };
    const first = render(InstanceCard, { instance: { ...base, queued: 2, footprint: { estimated } }, backendLabel: 'llama.cpp', onDelete: () => {} });
    expect(screen.getByTestId('queued-qwen').textContent).toContain('2 queued');
    expect(screen.getByTestId('footprint-qwen').textContent).toBe('1.0 GiB');
    first.unmount();
    render(InstanceCard, { instance: { ...base, footprint: { estimated, measured } }, backendLabel: 'llama.cpp', onDelete: () => {} });
    expect(screen.getByTestId('footprint-qwen').textContent).toContain('3.0 GiB');
    expect(screen.getByTestId('footprint-qwen').textContent).toContain('2.0 GiB GPU');
  });

  it('says why a failed instance failed and offers to start it', () => {
    const instance: Instance = { ...base, status: 'failed', health: null, started_at: null, error: 'exited with code 1: model file not found' };
    render(InstanceCard, { instance, backendLabel: 'llama.cpp', onDelete: () => {} });
    expect(screen.getByTestId('instance-status-qwen').textContent).toBe('failed');
    expect(text()).toContain('model file not found');
    expect(screen.getByTestId('start-qwen')).toBeTruthy();
  });
});

describe('InstanceCard keys', () => {
  afterEach(() => vi.unstubAllGlobals());

  it('acts on the focused card: s stops a running instance, Delete asks to delete', async () => {
    const { seen } = fakeEngine({ 'POST /api/v1/instances/qwen/stop': () => json({ ...base, status: 'stopped' }) });
    const asked: string[] = [];
    render(InstanceCard, { instance: base, backendLabel: 'llama.cpp', onDelete: (n: string) => asked.push(n) });
    const card = screen.getByTestId('instance-card-qwen');
    card.focus();
    await fireEvent.keyDown(card, { key: 's' });
    await fireEvent.keyDown(card, { key: 'Delete' });
    expect(seen.map((r) => `${r.method} ${r.path}`)).toEqual(['POST /api/v1/instances/qwen/stop']);
    expect(asked).toEqual(['qwen']);
  });
});
