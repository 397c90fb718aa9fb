// The engine's JSON shapes, as the OpenAPI document (/api/v1/openapi.json) describes them.

export type Status = 'stopped' | 'running' | 'failed';
export type Health = 'starting' | 'ready' | 'unhealthy' | 'restarting' | 'stopping';
export type BackendType = 'llama_cpp' | 'mlx_lm' | 'vllm' | (string & {});

export interface InstanceOptions {
  auto_restart: boolean;
  max_restarts: number;
  restart_delay: number;
  on_demand_start: boolean;
  idle_timeout: number;
  aliases?: string[];
  backend_type: BackendType;
  backend_options: Record<string, unknown>;
}

/** Whole process group; null when stopped (issue 6, may be missing on older engines). */
export interface Resources {
  cpu_percent: number | null;
  rss_bytes: number | null;
  vram_bytes: number | null;
}

export interface Instance {
  name: string;
  status: Status;
  created: number;
  options: InstanceOptions;
  health: Health | null;
  restarts: number;
  pid: number | null;
  started_at: number | null;
  error?: string;
  requests: number;
  in_flight: number;
  last_request_at: number | null;
  tokens_prompt: number;
  tokens_completion: number;
  tokens_per_second: number | null;
  resources?: Resources | null;
  warnings?: string[];
}

export type FieldType = 'boolean' | 'integer' | 'number' | 'string' | 'string_list';

export interface Field {
  name: string;
  flag?: string | null;
  aliases?: string[];
  type: FieldType;
  default?: unknown;
  help?: string;
  common?: boolean;
  choices?: string[] | null;
}

export interface Schema {
  lifecycle: Field[];
  backends: Record<string, { label: string; options: Field[] }>;
}

export interface SystemReport {
  os?: { name?: string; version?: string; kernel?: string; arch?: string };
  cpu?: { model?: string; cores?: number; threads?: number };
  memory?: { total_bytes?: number; used_bytes?: number; available_bytes?: number };
  accelerators?: Accelerator[];
  probes?: Probe[];
  suggested_backend?: string;
  engine?: { version?: string; addresses?: string[]; pid?: number; uptime_seconds?: number; llama_server?: string };
}

export interface Probe {
  name: string;
  /** False only when the probe failed; a missing driver is `present: false`. */
  ok: boolean;
  present?: boolean;
  error?: string;
  detail?: string;
  millis?: number;
}

export interface Accelerator {
  vendor?: string;
  name?: string;
  source?: string;
  memory_total_bytes?: number | null;
  memory_used_bytes?: number | null;
  memory_free_bytes?: number | null;
  driver?: string | null;
  utilization_percent?: number | null;
  temperature_c?: number | null;
  unified?: boolean;
  id?: string;
  cores?: number | null;
}

/** The desktop app's own settings (`/desktop/settings`; a headless engine has none). */
export interface DesktopSettings {
  close_to_tray: boolean;
  start_at_login: boolean;
}

/** A folder the desktop app can show in the file manager. */
export type DesktopFolder = 'data' | 'logs';
