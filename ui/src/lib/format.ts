// Numbers and durations as people read them.

export function duration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '–';
  const s = Math.floor(seconds);
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${s % 60}s`;
  const h = Math.floor(m / 60);
  if (h < 24) return `${h}h ${m % 60}m`;
  return `${Math.floor(h / 24)}d ${h % 24}h`;
}

export function bytes(value: number | null | undefined): string {
  if (value == null || !Number.isFinite(value)) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = value;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v >= 100 || i === 0 ? v.toFixed(0) : v.toFixed(1)} ${units[i]}`;
}

export function count(value: number): string {
  if (value < 1000) return String(value);
  if (value < 1_000_000) return `${(value / 1000).toFixed(value < 10_000 ? 1 : 0)}k`;
  return `${(value / 1_000_000).toFixed(1)}M`;
}

/** The last path component of a model path, or the repo name, for a card's title line. */
export function modelLabel(options: Record<string, unknown>): string {
  const model = options.model ?? options.hf_repo ?? options.model_url;
  if (typeof model !== 'string' || !model) return 'no model set';
  return model.split(/[\\/]/).filter(Boolean).pop() ?? model;
}

/** A valid instance name suggested from a model path: `Qwen3-8B-Q4_K_M.gguf` -> `qwen3-8b-q4_k_m`. */
export function nameFromModel(model: string): string {
  const base = (model.split(/[\\/]/).filter(Boolean).pop() ?? '').replace(/\.gguf$/i, '');
  return base
    .toLowerCase()
    .replace(/[^a-z0-9_-]+/g, '-')
    .replace(/^-+|-+$/g, '')
    .slice(0, 50);
}
