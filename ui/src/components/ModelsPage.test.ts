import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { fireEvent, render, screen, waitFor, within } from '@testing-library/svelte';
import ModelsPage from './ModelsPage.svelte';
import { replaceJobs } from '../lib/downloads.svelte';
import { applyEvent } from '../lib/instances.svelte';
import { fakeEngine, json } from '../test/engine';
import { job, library, model } from '../test/models.fixture';

describe('ModelsPage', () => {
  beforeEach(() => replaceJobs([]));
  afterEach(() => vi.unstubAllGlobals());

  it('lists the library with each model\'s fit and numbers, and sizes per source', async () => {
    fakeEngine({ 'GET /api/v1/models': () => json(library), 'GET /api/v1/models/jobs': () => json([]) });
    render(ModelsPage, {});
    const qwen = await screen.findByTestId('model-qwen');
    expect(screen.getByTestId('fit-qwen').textContent).toBe('Fits on the GPU');
    const numbers = [...screen.getByTestId('fit-numbers-qwen').querySelectorAll('li')].map((li) => li.textContent);
    expect(numbers).toEqual([
      'needs 1.5 GiB at 8,192 tokens (weights 1.0 GiB + KV cache 256 MiB + buffers 256 MiB)',
      'GPU 0 RTX 4090: 20.0 GiB free, fits',
      'RAM: 48.0 GiB free',
    ]);
    expect(qwen.textContent).toContain('Qwen/Qwen3-8B-GGUF:Q4_K_M');
    expect(screen.getByTestId('fit-llama70').textContent).toBe("Won't fit");
    expect(screen.getByTestId('fit-phi-mlx').textContent).toBe('CPU only');
    const totals = screen.getByRole('list', { name: 'Size per source' });
    expect(totals.textContent).toContain('Hugging Face cache 2 · 7.0 GiB');
    expect(totals.textContent).toContain('Models folder 1 · 40.0 GiB');
    // Only what Corral downloaded is marked as its own, and can be deleted.
    expect(screen.getByTestId('model-qwen').textContent).toContain("Corral's download");
    expect(screen.getByTestId('model-llama70').textContent).not.toContain("Corral's download");
    expect(screen.getByTestId('delete-model-qwen')).toBeTruthy();
    expect(screen.queryByTestId('delete-model-llama70')).toBeNull();
    expect(screen.getByTestId('create-from-qwen').getAttribute('href')).toBe(
      '#/new?backend=llama_cpp&model=%2Fmodels%2FQwen3-8B-Q4_K_M.gguf&ctx_size=8192&mmproj=%2Fhf%2Fqwen%2Fmmproj.gguf&gpu_layers=999',
    );
  });

  it('judges the fits again at the context picked, and labels a split over GPUs', async () => {
    const split = model({
      id: 'split',
      name: 'Split',
      fit: {
        ...library[0].fit,
        verdict: 'gpu_split',
        context: 32768,
        devices: [
          { id: '0', name: 'A', free_bytes: 2 ** 30, fits: false },
          { id: '1', name: 'B', free_bytes: 2 ** 30, fits: false },
        ],
        gpus: ['0', '1'],
      },
    });
    const { seen } = fakeEngine({
      'GET /api/v1/models': (req) => json(req.path.endsWith('?context=32768') ? [split] : library),
      'GET /api/v1/models/jobs': () => json([]),
    });
    render(ModelsPage, {});
    await screen.findByTestId('model-qwen');
    await fireEvent.change(screen.getByLabelText('Judge the fit at a context of'), { target: { value: '32768' } });
    expect((await screen.findByTestId('fit-split')).textContent).toBe('Fits on the GPUs together');
    expect(seen.map((r) => r.path).filter((p) => p.startsWith('/api/v1/models?'))).toEqual(['/api/v1/models?context=32768']);
    expect(screen.getByTestId('fit-numbers-split').textContent).toContain('at 32,768 tokens');
    // Created from it, every layer goes to the GPUs, at the context it was judged at.
    expect(screen.getByTestId('create-from-split').getAttribute('href')).toContain('ctx_size=8192');
    expect(screen.getByTestId('create-from-split').getAttribute('href')).toContain('gpu_layers=999');
  });

  it('filters by name, format, source and backend', async () => {
    fakeEngine({ 'GET /api/v1/models': () => json(library), 'GET /api/v1/models/jobs': () => json([]) });
    render(ModelsPage, {});
    await screen.findByTestId('model-qwen');
    const ids = () => screen.queryAllByTestId(/^model-/).map((el) => el.dataset.testid);
    await fireEvent.input(screen.getByLabelText('Filter models'), { target: { value: '70b' } });
    expect(ids()).toEqual(['model-llama70']);
    await fireEvent.input(screen.getByLabelText('Filter models'), { target: { value: '' } });
    await fireEvent.change(screen.getByLabelText('Filter by format'), { target: { value: 'mlx' } });
    expect(ids()).toEqual(['model-phi-mlx']);
    await fireEvent.change(screen.getByLabelText('Filter by format'), { target: { value: '' } });
    await fireEvent.change(screen.getByLabelText('Filter by source'), { target: { value: 'huggingface' } });
    await fireEvent.change(screen.getByLabelText('Filter by backend'), { target: { value: 'llama_cpp' } });
    expect(ids()).toEqual(['model-qwen']);
    await fireEvent.change(screen.getByLabelText('Filter by backend'), { target: { value: 'vllm' } });
    expect(screen.getByText('No model matches these filters.')).toBeTruthy();
  });

  it('deletes a downloaded model after asking, and lists the library again', async () => {
    let list = library;
    const { seen } = fakeEngine({
      'GET /api/v1/models': () => json(list),
      'GET /api/v1/models/jobs': () => json([]),
      'DELETE /api/v1/models': () => {
        list = library.slice(1);
        return new Response(null, { status: 204 });
      },
    });
    render(ModelsPage, {});
    await fireEvent.click(await screen.findByTestId('delete-model-qwen'));
    const dialog = screen.getByRole('dialog');
    expect(dialog.textContent).toContain('5.0 GiB');
    await fireEvent.click(within(dialog).getByTestId('confirm-delete-model'));
    await waitFor(() => expect(screen.queryByTestId('model-qwen')).toBeNull());
    expect(seen.find((r) => r.method === 'DELETE')?.path).toBe('/api/v1/models?repo=Qwen%2FQwen3-8B-GGUF&tag=Q4_K_M');
  });

  it('starts a download and follows it through the event stream, with cancel', async () => {
    let jobs: unknown[] = [];
    let list = library;
    const { seen } = fakeEngine({
      'GET /api/v1/models': () => json(list),
      'GET /api/v1/models/jobs': () => json(jobs),
      'POST /api/v1/models/download': () => {
        jobs = [job({ state: 'queued', bytes_done: 0, speed_bytes_per_s: 0, eta_s: null })];
        return json({ job_id: 'j1', repo: 'ggml-org/SmolLM2-135M-Instruct-GGUF', tag: 'Q8_0' }, 202);
      },
      'DELETE /api/v1/models/jobs/j2': () => json(job({ id: 'j2', repo: 'org/big', tag: null, state: 'cancelled', created_at: '2026-12-02T05:01:40Z' })),
    });
    render(ModelsPage, { download: 'ggml-org/SmolLM2-135M-Instruct-GGUF:Q8_0' });
    await screen.findByTestId('model-qwen');
    const repo = screen.getByTestId('download-repo') as HTMLInputElement;
    expect(repo.value).toBe('ggml-org/SmolLM2-135M-Instruct-GGUF:Q8_0');
    await fireEvent.change(screen.getByTestId('download-format'), { target: { value: 'gguf' } });
    await fireEvent.click(screen.getByTestId('download-start'));
    await screen.findByTestId('download-job-j1');
    expect(seen.find((r) => r.method === 'POST')?.body).toEqual({ repo: 'ggml-org/SmolLM2-135M-Instruct-GGUF:Q8_0', format: 'gguf' });

    applyEvent('download', JSON.stringify(job()));
    const row = screen.getByTestId('download-job-j1');
    await waitFor(() => expect(row.textContent).toContain('25.0 MiB of 100 MiB'));
    expect(row.textContent).toContain('5.0 MiB/s');
    expect(row.textContent).toContain('15s left');
    expect((within(row).getByRole('progressbar') as HTMLProgressElement).value).toBe(25 * 1024 ** 2);

    // A completed download shows in the library without a reload.
    list = [...library, model({ id: 'smol', name: 'SmolLM2-135M-Instruct-Q8_0', downloaded: true })];
    applyEvent('download', JSON.stringify(job({ state: 'completed', bytes_done: 100 * 1024 ** 2, path: '/data/models/smol.gguf' })));
    expect(await screen.findByTestId('model-smol')).toBeTruthy();
    expect(within(row).queryByRole('button', { name: 'Cancel' })).toBeNull();

    applyEvent('download', JSON.stringify(job({ id: 'j2', repo: 'org/big', tag: null, created_at: '2026-12-02T05:01:40Z' })));
    await fireEvent.click(await screen.findByTestId('download-cancel-j2'));
    await waitFor(() => expect(screen.getByTestId('download-job-j2').textContent).toContain('cancelled'));
    expect(seen.some((r) => r.method === 'DELETE' && r.path === '/api/v1/models/jobs/j2')).toBe(true);
  });

  it('shows why a download was refused', async () => {
    fakeEngine({
      'GET /api/v1/models': () => json([]),
      'GET /api/v1/models/jobs': () => json([]),
      'POST /api/v1/models/download': () => json({ error: 'repo_not_found', details: 'no repository org/nope on Hugging Face' }, 404),
    });
    render(ModelsPage, {});
    await fireEvent.input(screen.getByTestId('download-repo'), { target: { value: 'org/nope' } });
    await fireEvent.click(screen.getByTestId('download-start'));
    expect((await screen.findByRole('alert')).textContent).toBe('no repository org/nope on Hugging Face');
    await fireEvent.input(screen.getByTestId('download-repo'), { target: { value: 'not a repo' } });
    await fireEvent.click(screen.getByTestId('download-start'));
    expect((await screen.findByRole('alert')).textContent).toMatch(/as org\/name/);
  });

  it('says so when the engine has no library yet', async () => {
    fakeEngine({});
    render(ModelsPage, {});
    expect(await screen.findByText(/no model library yet/)).toBeTruthy();
  });
});
