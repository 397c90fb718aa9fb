import type { Schema } from '../lib/types';

export const schemaFixture: Schema = {
  lifecycle: [
    { name: 'auto_restart', flag: null, aliases: [], type: 'boolean', default: true, help: 'Restart the backend when it crashes.', common: true, choices: null },
    { name: 'idle_timeout', flag: null, aliases: [], type: 'integer', default: 0, help: 'Minutes without requests before stopping.', common: true, choices: null },
    { name: 'aliases', flag: null, aliases: [], type: 'string_list', default: null, help: 'Other model names.', common: true, choices: null },
  ],
  backends: {
    llama_cpp: {
      label: 'llama.cpp',
      options: [
        { name: 'model', flag: '--model', aliases: ['-m'], type: 'string', default: null, help: 'model path to load', common: true, choices: null },
        { name: 'port', flag: '--port', aliases: [], type: 'integer', default: 8080, help: 'port to listen', common: true, choices: null },
        { name: 'ctx_size', flag: '--ctx-size', aliases: ['-c'], type: 'integer', default: null, help: 'size of the prompt context', common: true, choices: null },
        { name: 'flash_attn', flag: '--flash-attn', aliases: ['-fa'], type: 'string', default: 'auto', help: 'Flash Attention', common: true, choices: ['on', 'off', 'auto'] },
        { name: 'jinja', flag: '--jinja', aliases: [], type: 'boolean', default: false, help: 'use jinja templates', common: true, choices: null },
        { name: 'rope_scale', flag: '--rope-scale', aliases: [], type: 'number', default: null, help: 'RoPE context scaling factor', common: false, choices: null },
        { name: 'batch_size', flag: '--batch-size', aliases: ['-b'], type: 'integer', default: 2048, help: 'logical maximum batch size', common: false, choices: null },
        { name: 'lora', flag: '--lora', aliases: [], type: 'string_list', default: null, help: 'path to LoRA adapter', common: false, choices: null },
      ],
    },
    vllm: {
      label: 'vLLM',
      options: [
        { name: 'model', flag: '--model', aliases: [], type: 'string', default: null, help: 'model name or path', common: true, choices: null },
        { name: 'max_model_len', flag: '--max-model-len', aliases: [], type: 'integer', default: null, help: 'context length', common: true, choices: null },
      ],
    },
  },
};
