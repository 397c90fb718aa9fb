// The model library and the backends, as the engine reports them (`/api/v1/models`,
// `/api/v1/models/jobs`, `/api/v1/backends` and its installs), and what the UI derives from them: the fit in
// words, and the instance form filled from a model.
//
// Every shape is the engine's own (./api/schema.d.ts, generated from its OpenAPI document).

import { body, json, parseSegment } from './api';
import type { components } from './api/schema';
import type { Prefill } from './router.svelte';

type Schemas = components['schemas'];

export type ModelBackend = Schemas['BackendType'];
export type ModelFormat = Schemas['Format'];
export type ModelSource = Schemas['SourceKind'];
/** Whether a model fits this machine at `context` tokens, and why. */
export type Fit = Schemas['Fit'];
/** A model found on this machine (`GET /api/v1/models`). */
export type Model = Schemas['ModelEntry'];

/** Where a download is in its life. */
export type JobState = Schemas['JobState'];

/** A download (`GET /api/v1/models/jobs`; live as `download` events on `/api/v1/events`). */
export type DownloadJob = Schemas['DownloadJob'];

/** A backend and whether this machine has it (`GET /api/v1/backends`). */
export type BackendInfo = Schemas['Installation'];
/** An install of a backend by Corral (live as `backend_install` events on `/api/v1/events`). */
export type InstallJob = Schemas['InstallJob'];

export const modelsApi = {
  /** `context`: the tokens to judge each fit at; the engine uses each model's own (at most 8k) without it. */
  list: (context?: number) => json<Model[]>(context ? `/models?context=${context}` : '/models'),
  remove: (model: Pick<Model, 'repo' | 'tag'>) => {
    const query = new URLSearchParams({ repo: model.repo ?? '' });
    if (model.tag) query.set('tag', model.tag);
    return json<void>(`/models?${query}`, { method: 'DELETE' });
  },
  download: (repo: string, format?: Schemas['ModelFormat']) =>
    json<Schemas['DownloadAccepted']>('/models/download', {
      method: 'POST',
      ...body(format ? { repo, format } : { repo }),
    }),
  jobs: () => json<DownloadJob[]>('/models/jobs'),
  /** Answers the job, cancelled. */
  cancel: (id: string) => json<DownloadJob>(`/models/jobs/${encodeURIComponent(id)}`, { method: 'DELETE' }),
  backends: () => json<BackendInfo[]>('/backends'),
  install: (backend: ModelBackend) => json<InstallJob>(installPath(backend), { method: 'POST' }),
  /** The backend's latest install; 404 when there was none since the engine started. */
  latestInstall: (backend: ModelBackend) => json<InstallJob>(installPath(backend)),
  /** Answers the job, cancelled. */
  cancelInstall: (backend: ModelBackend) => json<InstallJob>(installPath(backend), { method: 'DELETE' }),
};

const installPath = (backend: ModelBackend) => `/backends/${parseSegment(backend)}/install`;

/** The guided start's suggestion: small enough to download in seconds and run on any CPU. */
export const STARTER_MODEL = 'ggml-org/SmolLM2-135M-Instruct-GGUF:Q8_0';

export const BACKEND_LABELS: Record<ModelBackend, string> = { llama_cpp: 'llama.cpp', mlx_lm: 'MLX', vllm: 'vLLM' };
export const SOURCE_LABELS: Record<ModelSource, string> = {
  huggingface: 'Hugging Face cache',
  llama_cpp: 'llama.cpp cache',
  lm_studio: 'LM Studio',
  ollama: 'Ollama',
  models_dir: 'Models folder',
};

export const FIT_LABELS: Record<Fit['verdict'], string> = {
  gpu: 'Fits on the GPU',
  gpu_split: 'Fits on the GPUs together',
  cpu: 'CPU only',
  none: "Won't fit",
  unknown: 'Fit unknown',
};

/**
 * The instance form filled from a model: its first backend, the path, and what the fit allows.
 * The context is the model's own, but no more than the fit was judged at (the engine caps it):
 * a verdict of "fits on the GPU" holds for that context, not for a 128k one.
 */
export function prefillFor(model: Model): Prefill {
  const backend = model.backends[0] ?? (model.format === 'gguf' ? 'llama_cpp' : 'vllm');
  const options: Record<string, string> = { model: model.path };
  if (backend === 'llama_cpp') {
    if (model.context_length) options.ctx_size = String(Math.min(model.context_length, model.fit.context || model.context_length));
    if (model.mmproj) options.mmproj = model.mmproj;
    // 999 layers is "all of them" to llama-server (spread over every GPU by its default layer
    // split); 0 keeps it off GPUs it would not fit.
    options.gpu_layers = model.fit.verdict === 'gpu' || model.fit.verdict === 'gpu_split' ? '999' : '0';
  }
  return { backend_type: backend, backend_options: options };
}

/** `1234567890` parameters as people say them: `1.2B`. */
export function parameterCount(n: number | null | undefined): string | null {
  if (n == null) return null;
  if (n >= 1e9) return `${(n / 1e9).toFixed(n >= 1e10 ? 0 : 1)}B`;
  if (n >= 1e6) return `${Math.round(n / 1e6)}M`;
  return String(n);
}

/** The contexts the library offers to judge fits at (0: each model's own, at most 8k). */
export const FIT_CONTEXTS = [0, 4096, 8192, 16384, 32768, 65536, 131072];

/** What a fit's numbers are: the memory needed, its parts, and each GPU's and the RAM's free memory. */
export function fitNumbers(fit: Fit, format: (bytes: number) => string): string[] {
  const parts = [`weights ${format(fit.weights_bytes)}`];
  if (fit.kv_cache_bytes) parts.push(`KV cache ${format(fit.kv_cache_bytes)}`);
  if (fit.buffers_bytes) parts.push(`buffers ${format(fit.buffers_bytes)}`);
  const lines = [`needs ${format(fit.needed_bytes)} at ${fit.context.toLocaleString('en')} tokens (${parts.join(' + ')})`];
  for (const gpu of fit.devices) {
    lines.push(`GPU ${gpu.id} ${gpu.name}: ${format(gpu.free_bytes)} free${gpu.fits ? ', fits' : ''}`);
  }
  lines.push(`RAM: ${format(fit.ram_free_bytes)} free`);
  return lines;
}

/** True for a job that is not over yet. */
export function active(job: DownloadJob): boolean {
  return job.state === 'queued' || job.state === 'running';
}
