import type { BackendInfo, DownloadJob, Model } from '../lib/models';

const GiB = 1024 ** 3;

export function model(overrides: Partial<Model> & Pick<Model, 'id' | 'name'>): Model {
  return {
    repo: null,
    tag: null,
    format: 'gguf',
    path: `/models/${overrides.name}.gguf`,
    files: [],
    size_bytes: GiB,
    architecture: 'llama',
    parameters: 1_500_000_000,
    quantization: 'Q4_K_M',
    context_length: 8192,
    mmproj: null,
    source: 'models_dir',
    source_dir: '/models',
    backends: ['llama_cpp'],
    downloaded: false,
    error: null,
    fit: {
      verdict: 'gpu',
      context: 8192,
      needed_bytes: 1.5 * GiB,
      weights_bytes: GiB,
      kv_cache_bytes: 0.25 * GiB,
      buffers_bytes: 0.25 * GiB,
      devices: [{ id: '0', name: 'RTX 4090', free_bytes: 20 * GiB, fits: true }],
      gpus: ['0'],
      ram_free_bytes: 48 * GiB,
      detail: 'all layers on the GPU',
    },
    ...overrides,
  };
}

export const library: Model[] = [
  model({ id: 'qwen', name: 'Qwen3-8B-Q4_K_M', repo: 'Qwen/Qwen3-8B-GGUF', tag: 'Q4_K_M', source: 'huggingface', downloaded: true, size_bytes: 5 * GiB, mmproj: '/hf/qwen/mmproj.gguf' }),
  model({
    id: 'llama70',
    name: 'Llama-3.3-70B-Q4_K_M',
    size_bytes: 40 * GiB,
    fit: {
      verdict: 'none',
      context: 8192,
      needed_bytes: 44 * GiB,
      weights_bytes: 40 * GiB,
      kv_cache_bytes: 2.5 * GiB,
      buffers_bytes: 1.5 * GiB,
      devices: [{ id: '0', name: 'RTX 4090', free_bytes: 20 * GiB, fits: false }],
      gpus: [],
      ram_free_bytes: 30 * GiB,
      detail: 'needs more memory than the GPU and RAM have free',
    },
  }),
  model({
    id: 'phi-mlx',
    name: 'Phi-4-mini-4bit',
    format: 'mlx',
    path: 'mlx-community/Phi-4-mini-4bit',
    source: 'huggingface',
    backends: ['mlx_lm'],
    quantization: null,
    context_length: null,
    size_bytes: 2 * GiB,
    fit: { verdict: 'cpu', context: 4096, needed_bytes: 2.5 * GiB, weights_bytes: 2 * GiB, kv_cache_bytes: 0.5 * GiB, buffers_bytes: 0, devices: [], gpus: [], ram_free_bytes: 48 * GiB, detail: 'runs on the CPU' },
  }),
];

export const backendsFixture: BackendInfo[] = [
  { backend: 'llama_cpp', installed: true, managed: false, command: 'llama-server', path: '/usr/bin/llama-server', version: 'b6000', devices: ['CPU'], error: null, install: null },
  {
    backend: 'vllm',
    installed: false,
    managed: false,
    command: 'vllm',
    path: null,
    version: null,
    devices: [],
    error: 'not found on PATH',
    install: { summary: 'vLLM is a Python package; it needs an NVIDIA GPU.', commands: ['pip install vllm'] },
  },
];

export function job(overrides: Partial<DownloadJob> = {}): DownloadJob {
  return {
    id: 'j1',
    repo: 'ggml-org/SmolLM2-135M-Instruct-GGUF',
    tag: 'Q8_0',
    format: 'gguf',
    state: 'running',
    files_total: 1,
    files_done: 0,
    bytes_total: 100 * 1024 ** 2,
    bytes_done: 25 * 1024 ** 2,
    speed_bytes_per_s: 5 * 1024 ** 2,
    eta_s: 15,
    error: null,
    created_at: '2026-12-02T05:00:00Z',
    path: null,
    ...overrides,
  };
}
