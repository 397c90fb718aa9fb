// The form's view of option values: text in the inputs <-> typed JSON for the engine, following
// the engine's option schema (`GET /api/v1/schema`).

import type { Field, Schema } from './types';

/** What an input holds: text for numbers and strings, one item per line for lists. */
export type Raw = string | boolean | undefined;

export function toRaw(field: Field, value: unknown): Raw {
  if (value === undefined || value === null) return undefined;
  switch (field.type) {
    case 'boolean':
      return Boolean(value);
    case 'string_list':
      return Array.isArray(value) ? value.join('\n') : String(value);
    case 'string_map':
      return typeof value === 'object'
        ? Object.entries(value as Record<string, unknown>)
            .map(([name, v]) => `${name}=${String(v)}`)
            .join('\n')
        : String(value);
    default:
      return String(value);
  }
}

export class InvalidValue extends Error {}

/** The JSON value to send, or undefined to leave the option out (the backend's default). */
export function fromRaw(field: Field, raw: Raw): unknown {
  if (raw === undefined) return undefined;
  switch (field.type) {
    case 'boolean':
      return typeof raw === 'boolean' ? raw : raw === 'true';
    case 'integer': {
      const text = String(raw).trim();
      if (text === '') return undefined;
      if (!/^[-+]?\d+$/.test(text)) throw new InvalidValue('Enter a whole number.');
      return Number(text);
    }
    case 'number': {
      const text = String(raw).trim();
      if (text === '') return undefined;
      const n = Number(text);
      if (!Number.isFinite(n)) throw new InvalidValue('Enter a number.');
      return n;
    }
    case 'string_list': {
      const items = String(raw)
        .split('\n')
        .map((s) => s.trim())
        .filter(Boolean);
      return items.length ? items : undefined;
    }
    case 'string_map': {
      const map: Record<string, string> = {};
      for (const line of String(raw).split('\n')) {
        if (line.trim() === '') continue;
        const at = line.indexOf('=');
        const name = (at < 0 ? line : line.slice(0, at)).trim();
        if (at < 0 || name === '') throw new InvalidValue('Write one NAME=value per line.');
        // The value is kept as written: spaces may matter to the backend.
        map[name] = line.slice(at + 1);
      }
      return Object.keys(map).length ? map : undefined;
    }
    default: {
      const text = String(raw).trim();
      return text === '' ? undefined : text;
    }
  }
}

/** `extra_args` as the textarea shows it: one `name value` (or bare `name`) per line. */
export function extraToText(extra: unknown): string {
  if (!extra || typeof extra !== 'object') return '';
  return Object.entries(extra as Record<string, unknown>)
    .map(([k, v]) => (v === '' || v === 'true' || v === true ? k : `${k} ${String(v)}`))
    .join('\n');
}

export function textToExtra(text: string): Record<string, string> | undefined {
  const extra: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const trimmed = line.trim();
    if (!trimmed) continue;
    const [flag, ...rest] = trimmed.split(/\s+/);
    extra[flag.replace(/^-+/, '')] = rest.join(' ');
  }
  return Object.keys(extra).length ? extra : undefined;
}

/** Matches a search against an option's name, flag, aliases and help. */
export function fieldMatches(field: Field, query: string): boolean {
  const q = query.trim().toLowerCase().replace(/^-+/, '');
  if (!q) return true;
  return [field.name, field.flag ?? '', ...(field.aliases ?? []), field.help ?? '']
    .join(' ')
    .toLowerCase()
    .includes(q);
}

export function label(field: Field): string {
  const text = field.name.replace(/_/g, ' ');
  return text.charAt(0).toUpperCase() + text.slice(1);
}

const f = (name: string, type: Field['type'], help: string, common = true, flag?: string): Field => ({
  name,
  type,
  help,
  common,
  flag: flag ?? `--${name.replace(/_/g, '-')}`,
  aliases: [],
  default: null,
  choices: null,
});

/**
 * The essentials, for an engine that does not serve `/schema` yet: enough to run a model.
 * Every other option can still be set through import-from-command or extra arguments.
 */
export const fallbackSchema: Schema = {
  lifecycle: [
    f('auto_restart', 'boolean', 'Restart the backend when it crashes.'),
    f('max_restarts', 'integer', 'Automatic restarts allowed before the instance is failed.'),
    f('restart_delay', 'integer', 'Seconds to wait before an automatic restart.'),
    f('on_demand_start', 'boolean', 'Let /v1 requests start the instance when it is stopped.'),
    f('idle_timeout', 'integer', 'Minutes without requests before the instance is stopped; 0 = never.'),
    f('aliases', 'string_list', 'Other model names /v1 requests may use for this instance.'),
  ],
  backends: {
    llama_cpp: {
      label: 'llama.cpp',
      options: [
        f('model', 'string', 'Path of the GGUF model file.'),
        f('hf_repo', 'string', 'Hugging Face repository, e.g. ggml-org/gemma-3-1b-it-GGUF.'),
        f('port', 'integer', 'Port of the backend; empty = picked by Corral.'),
        f('ctx_size', 'integer', 'Size of the prompt context (0 = from the model).'),
        f('gpu_layers', 'string', 'Layers to offload to the GPU (a number, auto or all).'),
        f('threads', 'integer', 'CPU threads used during generation.'),
      ],
    },
    mlx_lm: {
      label: 'MLX',
      options: [f('model', 'string', 'Model path or Hugging Face repository.'), f('port', 'integer', 'Port of the backend.')],
    },
    vllm: {
      label: 'vLLM',
      options: [f('model', 'string', 'Model path or Hugging Face repository.'), f('port', 'integer', 'Port of the backend.')],
    },
  },
};
