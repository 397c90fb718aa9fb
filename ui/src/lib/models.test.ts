import { describe, expect, it } from 'vitest';
import { parseRoute, href } from './router.svelte';
import { prefillFor } from './models';
import { library, model } from '../test/models.fixture';

describe('prefillFor', () => {
  it('fills llama.cpp from the model: path, its context, its projector, all layers on a GPU it fits', () => {
    expect(prefillFor(library[0])).toEqual({
      backend_type: 'llama_cpp',
      backend_options: { model: '/models/Qwen3-8B-Q4_K_M.gguf', ctx_size: '8192', mmproj: '/hf/qwen/mmproj.gguf', gpu_layers: '999' },
    });
  });

  it('asks for no more context than the fit was judged at', () => {
    const long = model({ id: 'l', name: 'l', context_length: 131072, fit: { ...library[0].fit, context: 32768 } });
    expect(prefillFor(long).backend_options.ctx_size).toBe('32768');
  });

  it('keeps a model that does not fit the GPU off it, and leaves an unknown context to the backend', () => {
    const cpu = model({ id: 'c', name: 'c', context_length: null, fit: { ...library[0].fit, verdict: 'cpu' } });
    expect(prefillFor(cpu).backend_options).toEqual({ model: '/models/c.gguf', gpu_layers: '0' });
  });

  it('gives an MLX model only its path', () => {
    expect(prefillFor(library[2])).toEqual({ backend_type: 'mlx_lm', backend_options: { model: 'mlx-community/Phi-4-mini-4bit' } });
  });

  it('survives the trip through the address', () => {
    const prefill = prefillFor(library[0]);
    expect(parseRoute(href({ page: 'new', prefill }))).toEqual({ page: 'new', prefill });
    expect(parseRoute('#/new?import')).toEqual({ page: 'new', import: true });
    expect(parseRoute(href({ page: 'models', download: 'org/x:Q8_0' }))).toEqual({ page: 'models', download: 'org/x:Q8_0' });
    expect(parseRoute(href({ page: 'chat', name: 'a b' }))).toEqual({ page: 'chat', name: 'a b' });
  });
});
