import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { fireEvent, render, screen, waitFor, within } from '@testing-library/svelte';
import InstanceForm from './InstanceForm.svelte';
import { schemaFixture } from '../test/schema.fixture';
import { fakeEngine, json } from '../test/engine';
import { library } from '../test/models.fixture';
import { prefillFor } from '../lib/models';

const created = (name: string, body: Record<string, unknown>) => ({
  name,
  status: 'running',
  created: 1,
  options: { auto_restart: true, max_restarts: 3, restart_delay: 5, on_demand_start: true, idle_timeout: 0, ...body },
  health: 'starting',
  restarts: 0,
  pid: 1,
  started_at: 1,
  requests: 0,
  in_flight: 0,
  last_request_at: null,
  tokens_prompt: 0,
  tokens_completion: 0,
  tokens_per_second: null,
});

describe('InstanceForm', () => {
  beforeEach(() => {
    location.hash = '#/new';
  });
  afterEach(() => vi.unstubAllGlobals());

  it('shows the common fields of the schema and finds the others by search', async () => {
    render(InstanceForm, { schema: schemaFixture });
    expect(screen.getByTestId('field-model')).toBeTruthy();
    expect(screen.getByTestId('field-ctx_size')).toBeTruthy();
    expect((screen.getByTestId('field-flash_attn') as HTMLSelectElement).options.length).toBe(4);
    expect(screen.getByTestId('field-auto_restart')).toBeTruthy();
    expect(screen.queryByTestId('field-rope_scale')).toBeNull();

    await fireEvent.input(screen.getByLabelText('Search options'), { target: { value: 'rope' } });
    expect(screen.getByTestId('field-rope_scale')).toBeTruthy();
    expect(screen.queryByTestId('field-batch_size')).toBeNull();

    // By flag alias too.
    await fireEvent.input(screen.getByLabelText('Search options'), { target: { value: '-b' } });
    expect(screen.getByTestId('field-batch_size')).toBeTruthy();
  });

  it('switches fields with the backend', async () => {
    render(InstanceForm, { schema: schemaFixture });
    await fireEvent.change(screen.getByTestId('field-backend_type'), { target: { value: 'vllm' } });
    expect(screen.getByTestId('field-max_model_len')).toBeTruthy();
    expect(screen.queryByTestId('field-ctx_size')).toBeNull();
  });

  it('sends typed options: numbers as numbers, lists as arrays, empty fields left out', async () => {
    const { seen } = fakeEngine({
      'POST /api/v1/instances/qwen': (req) => json(created('qwen', req.body as Record<string, unknown>), 201),
    });
    render(InstanceForm, { schema: schemaFixture });
    await fireEvent.input(screen.getByTestId('field-name'), { target: { value: 'qwen' } });
    await fireEvent.input(screen.getByTestId('field-model'), { target: { value: '/models/qwen.gguf' } });
    await fireEvent.input(screen.getByTestId('field-ctx_size'), { target: { value: '4096' } });
    await fireEvent.click(screen.getByTestId('field-jinja'));
    await fireEvent.input(screen.getByTestId('field-aliases'), { target: { value: 'gpt-4o\n\nqwen-latest' } });
    await fireEvent.click(screen.getByTestId('save-instance'));

    await waitFor(() => expect(location.hash).toBe('#/'));
    expect(seen.find((r) => r.method === 'POST')?.body).toEqual({
      backend_type: 'llama_cpp',
      backend_options: { model: '/models/qwen.gguf', ctx_size: 4096, jinja: true },
      aliases: ['gpt-4o', 'qwen-latest'],
    });
  });

  it('shows the engine\'s message at the field it names, and clears it on edit', async () => {
    fakeEngine({
      'POST /api/v1/instances/big': () =>
        json(
          {
            error: 'invalid_options',
            details: 'option `ctx_size` is out of range: -5',
            field: 'backend_options.ctx_size',
          },
          400,
        ),
    });
    render(InstanceForm, { schema: schemaFixture });
    await fireEvent.input(screen.getByTestId('field-name'), { target: { value: 'big' } });
    await fireEvent.input(screen.getByTestId('field-ctx_size'), { target: { value: '-5' } });
    await fireEvent.click(screen.getByTestId('save-instance'));

    const ctx = screen.getByTestId('field-ctx_size');
    await waitFor(() => expect(ctx.getAttribute('aria-invalid')).toBe('true'));
    const message = document.getElementById(ctx.getAttribute('aria-describedby')!);
    expect(message?.textContent).toContain('out of range: -5');
    expect(location.hash).toBe('#/new');

    await fireEvent.input(ctx, { target: { value: '2048' } });
    expect(ctx.getAttribute('aria-invalid')).toBeNull();
  });

  it('brings a hidden option into view when the engine rejects it', async () => {
    fakeEngine({
      'POST /api/v1/instances/x': () =>
        json({ error: 'invalid_options', details: 'rope_scale must be positive', field: 'backend_options.rope_scale' }, 400),
    });
    render(InstanceForm, { schema: schemaFixture });
    await fireEvent.input(screen.getByLabelText('Search options'), { target: { value: 'rope' } });
    await fireEvent.input(screen.getByTestId('field-rope_scale'), { target: { value: '-1' } });
    await fireEvent.input(screen.getByLabelText('Search options'), { target: { value: '' } });
    await fireEvent.input(screen.getByTestId('field-name'), { target: { value: 'x' } });
    await fireEvent.click(screen.getByTestId('save-instance'));
    await waitFor(() => expect(screen.getByTestId('field-rope_scale').getAttribute('aria-invalid')).toBe('true'));
    expect(screen.getByText('rope_scale must be positive')).toBeTruthy();
  });

  it('catches a bad number before asking the engine', async () => {
    const { seen } = fakeEngine({});
    render(InstanceForm, { schema: schemaFixture });
    await fireEvent.input(screen.getByTestId('field-name'), { target: { value: 'ok' } });
    await fireEvent.input(screen.getByTestId('field-ctx_size'), { target: { value: '4k' } });
    await fireEvent.click(screen.getByTestId('save-instance'));
    expect(screen.getByText('Enter a whole number.')).toBeTruthy();
    // Only the model picker's look at the library: nothing was sent.
    expect(seen.filter((r) => r.method !== 'GET')).toEqual([]);
  });

  it('fills the form from an imported command line', async () => {
    const { seen } = fakeEngine({
      'POST /api/v1/backends/llama-cpp/parse-command': () =>
        json({
          backend_type: 'llama_cpp',
          backend_options: {
            model: '/models/Qwen3-8B-Q4_K_M.gguf',
            ctx_size: 8192,
            flash_attn: 'on',
            rope_scale: 2.5,
            extra_args: { 'no-mmap': '' },
          },
        }),
    });
    render(InstanceForm, { schema: schemaFixture });
    await fireEvent.click(screen.getByTestId('import-command'));
    const text = 'llama-server -m /models/Qwen3-8B-Q4_K_M.gguf -c 8192 -fa on --rope-scale 2.5 --no-mmap';
    await fireEvent.input(screen.getByTestId('import-command-text'), { target: { value: text } });
    await fireEvent.click(screen.getByTestId('import-command-apply'));

    await waitFor(() => expect(screen.queryByTestId('import-command-text')).toBeNull());
    expect(seen.find((r) => r.method === 'POST')?.body).toEqual({ command: text });
    expect((screen.getByTestId('field-model') as HTMLInputElement).value).toBe('/models/Qwen3-8B-Q4_K_M.gguf');
    expect((screen.getByTestId('field-ctx_size') as HTMLInputElement).value).toBe('8192');
    expect((screen.getByTestId('field-flash_attn') as HTMLSelectElement).value).toBe('on');
    // A non-common option that was set is shown without searching.
    expect((screen.getByTestId('field-rope_scale') as HTMLInputElement).value).toBe('2.5');
    expect((screen.getByTestId('field-extra_args') as HTMLTextAreaElement).value).toBe('no-mmap');
    expect((screen.getByTestId('field-name') as HTMLInputElement).value).toBe('qwen3-8b-q4_k_m');
  });

  it('shows why a command could not be imported', async () => {
    fakeEngine({
      'POST /api/v1/backends/vllm/parse-command': () =>
        json({ error: 'parse_error', details: 'unknown flag --bogus' }, 400),
    });
    render(InstanceForm, { schema: schemaFixture });
    await fireEvent.click(screen.getByTestId('import-command'));
    await fireEvent.input(screen.getByTestId('import-command-text'), { target: { value: 'vllm serve m --bogus' } });
    await fireEvent.click(screen.getByTestId('import-command-apply'));
    expect(await screen.findByText('unknown flag --bogus')).toBeTruthy();
  });
});

describe('InstanceForm, with the model library', () => {
  beforeEach(() => {
    location.hash = '#/new';
  });
  afterEach(() => vi.unstubAllGlobals());

  it('starts filled from a model of the library', async () => {
    const { seen } = fakeEngine({
      'GET /api/v1/models': () => json(library),
      'POST /api/v1/instances/qwen3-8b-q4_k_m': (req) => json(created('qwen3-8b-q4_k_m', req.body as Record<string, unknown>), 201),
    });
    const schema = structuredClone(schemaFixture);
    schema.backends.llama_cpp.options.push(
      { name: 'gpu_layers', flag: '--gpu-layers', aliases: ['-ngl'], type: 'string', default: null, help: 'layers on the GPU', common: true, choices: null },
      { name: 'mmproj', flag: '--mmproj', aliases: [], type: 'string', default: null, help: 'vision projector', common: false, choices: null },
    );
    render(InstanceForm, { schema, prefill: prefillFor(library[0]) });
    await waitFor(() => expect((screen.getByTestId('field-model') as HTMLInputElement).value).toBe('/models/Qwen3-8B-Q4_K_M.gguf'));
    expect((screen.getByTestId('field-name') as HTMLInputElement).value).toBe('qwen3-8b-q4_k_m');
    expect((screen.getByTestId('field-ctx_size') as HTMLInputElement).value).toBe('8192');
    expect((screen.getByTestId('field-gpu_layers') as HTMLInputElement).value).toBe('999');
    expect((screen.getByTestId('field-mmproj') as HTMLInputElement).value).toBe('/hf/qwen/mmproj.gguf');
    await fireEvent.click(screen.getByTestId('save-instance'));
    await waitFor(() => expect(seen.some((r) => r.method === 'POST')).toBe(true));
    expect(seen.find((r) => r.method === 'POST')?.body).toMatchObject({
      backend_type: 'llama_cpp',
      backend_options: { model: '/models/Qwen3-8B-Q4_K_M.gguf', ctx_size: 8192, gpu_layers: '999', mmproj: '/hf/qwen/mmproj.gguf' },
    });
  });

  it('picks the model from the library, offering only what the backend can serve', async () => {
    fakeEngine({ 'GET /api/v1/models': () => json(library) });
    render(InstanceForm, { schema: schemaFixture });
    const pick = await screen.findByTestId('pick-model');
    expect(pick.textContent?.trim()).toBe('Library (2)');
    await fireEvent.click(pick);
    const dialog = screen.getByRole('dialog');
    expect(within(dialog).queryByTestId('pick-phi-mlx')).toBeNull();
    await fireEvent.input(within(dialog).getByTestId('pick-model-search'), { target: { value: '70b' } });
    expect(within(dialog).queryByTestId('pick-qwen')).toBeNull();
    await fireEvent.click(within(dialog).getByTestId('pick-llama70'));
    expect(screen.queryByRole('dialog')).toBeNull();
    expect((screen.getByTestId('field-model') as HTMLInputElement).value).toBe('/models/Llama-3.3-70B-Q4_K_M.gguf');
    expect((screen.getByTestId('field-name') as HTMLInputElement).value).toBe('llama-3-3-70b-q4_k_m');
    // A typed path is still a path.
    await fireEvent.input(screen.getByTestId('field-model'), { target: { value: '/elsewhere/m.gguf' } });
    expect((screen.getByTestId('field-model') as HTMLInputElement).value).toBe('/elsewhere/m.gguf');
  });

  it('has no picker on an engine without a library', async () => {
    const { seen } = fakeEngine({});
    render(InstanceForm, { schema: schemaFixture });
    await waitFor(() => expect(seen.some((r) => r.path === '/api/v1/models')).toBe(true));
    // Let the 404 settle (a macrotask: the fake's answer and its handlers are microtasks).
    await new Promise((r) => setTimeout(r, 0));
    expect(screen.getByTestId('field-model')).toBeTruthy();
    expect(screen.queryByTestId('pick-model')).toBeNull();
  });

  it('explains a backend that is not installed, with the engine\'s advice', async () => {
    fakeEngine({
      'POST /api/v1/instances/v': () =>
        json({ error: 'backend_not_installed', details: 'vllm is not installed: `vllm` is not on PATH. Install vLLM with pip: pip install vllm' }, 422),
    });
    render(InstanceForm, { schema: schemaFixture });
    await fireEvent.change(screen.getByTestId('field-backend_type'), { target: { value: 'vllm' } });
    await fireEvent.input(screen.getByTestId('field-name'), { target: { value: 'v' } });
    await fireEvent.input(screen.getByTestId('field-model'), { target: { value: 'Qwen/Qwen3-8B' } });
    await fireEvent.click(screen.getByTestId('save-instance'));
    const notice = await screen.findByTestId('backend-not-installed');
    expect(notice.textContent).toContain('vLLM is not installed on this machine.');
    expect(notice.textContent).toContain('Install vLLM with pip: pip install vllm');
    expect(location.hash).toBe('#/new');
  });

  it('shows a model that is not there at the model field', async () => {
    fakeEngine({
      'POST /api/v1/instances/m': () => json({ error: 'model_not_found', details: 'no file at /models/gone.gguf' }, 400),
    });
    render(InstanceForm, { schema: schemaFixture });
    await fireEvent.input(screen.getByTestId('field-name'), { target: { value: 'm' } });
    await fireEvent.input(screen.getByTestId('field-model'), { target: { value: '/models/gone.gguf' } });
    await fireEvent.click(screen.getByTestId('save-instance'));
    const field = screen.getByTestId('field-model');
    await waitFor(() => expect(field.getAttribute('aria-invalid')).toBe('true'));
    expect(document.getElementById(field.getAttribute('aria-describedby')!)?.textContent).toBe('no file at /models/gone.gguf');
  });
});

describe('InstanceForm, editing', () => {
  afterEach(() => vi.unstubAllGlobals());

  it('starts from the instance\'s options and saves them back with PUT', async () => {
    const existing = created('tiny', {
      backend_type: 'llama_cpp',
      backend_options: { model: '/m/tiny.gguf', port: 8001, rope_scale: 2, extra_args: { 'no-mmap': '' } },
      idle_timeout: 15,
      aliases: ['small'],
    });
    const { seen } = fakeEngine({
      'GET /api/v1/instances/tiny': () => json(existing),
      'PUT /api/v1/instances/tiny': (req) => json(created('tiny', req.body as Record<string, unknown>)),
    });
    render(InstanceForm, { schema: schemaFixture, editing: 'tiny' });
    const model = (await screen.findByTestId('field-model')) as HTMLInputElement;
    expect(model.value).toBe('/m/tiny.gguf');
    expect((screen.getByTestId('field-name') as HTMLInputElement).disabled).toBe(true);
    expect((screen.getByTestId('field-rope_scale') as HTMLInputElement).value).toBe('2');
    expect((screen.getByTestId('field-idle_timeout') as HTMLInputElement).value).toBe('15');

    await fireEvent.input(screen.getByTestId('field-ctx_size'), { target: { value: '1024' } });
    await fireEvent.click(screen.getByTestId('save-instance'));
    await waitFor(() => expect(seen.some((r) => r.method === 'PUT')).toBe(true));
    expect(seen.find((r) => r.method === 'PUT')?.body).toEqual({
      backend_type: 'llama_cpp',
      backend_options: { model: '/m/tiny.gguf', port: 8001, ctx_size: 1024, rope_scale: 2, extra_args: { 'no-mmap': '' } },
      auto_restart: true,
      idle_timeout: 15,
      aliases: ['small'],
    });
  });
});
