// One streamed chat completion through the engine's OpenAI endpoint (`POST /v1/chat/completions`,
// `stream: true`): the reply and its reasoning as they grow, and the figures a user compares
// models by (time to first token, tokens per second).

import { errorOf } from './api';
import { authHeaders } from './auth.svelte';
import { SseParser } from './sse';

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant';
  content: string;
}

/** The sampling settings the page offers; an unset one is left to the backend's default. */
export interface Sampling {
  temperature?: number;
  top_p?: number;
  /** llama.cpp, vLLM and MLX take these two beside OpenAI's. */
  top_k?: number;
  min_p?: number;
  /** llama.cpp's name for it. */
  repeat_penalty?: number;
  /** vLLM's and MLX's name for it. */
  repetition_penalty?: number;
  max_tokens?: number;
  seed?: number;
}

export interface ChatStats {
  /** From sending the request to the first content or reasoning token. */
  ttftMs: number | null;
  tokensPerSecond: number | null;
  completionTokens: number | null;
  promptTokens: number | null;
  /** True when the token count is the backend's `usage`, false when counted from the chunks. */
  fromUsage: boolean;
}

export interface Reply {
  content: string;
  reasoning: string;
  finishReason: string | null;
  stats: ChatStats;
}

export interface StreamChatOptions {
  /** Sent instead of the sign-in key, to see what an app holding this key would get. */
  key?: string;
  signal?: AbortSignal;
  /** Called after every chunk with the reply so far. */
  onUpdate?: (reply: Reply) => void;
  /** The clock, in milliseconds (tests pass their own). */
  now?: () => number;
}

/** A failure the backend or the engine reported (a refused key, an unknown model, a crash mid-stream). */
export class ChatError extends Error {
  constructor(
    message: string,
    readonly status: number,
  ) {
    super(message);
  }
}

const KEY_STORAGE = 'corral.chat.key';

/**
 * The Chat page's own API key ('' for none). Kept as the sign-in key is, in this tab's
 * sessionStorage: a key pasted to try it should not outlive the tab.
 */
export function storedChatKey(): string {
  try {
    return sessionStorage.getItem(KEY_STORAGE) ?? '';
  } catch {
    // Storage can be disabled (privacy modes); the key then lives only as long as the page.
    return '';
  }
}

export function storeChatKey(key: string): void {
  try {
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    else sessionStorage.removeItem(KEY_STORAGE);
  } catch {
    // See storedChatKey().
  }
}

interface Chunk {
  choices?: { delta?: { content?: string | null; reasoning_content?: string | null }; finish_reason?: string | null }[];
  usage?: { prompt_tokens?: number; completion_tokens?: number } | null;
  error?: { message?: string } | string;
}

/**
 * Streams the reply of `model` (an instance's name) to `messages`. Resolves with the whole reply
 * when the stream ends; an abort (the stop button) resolves too, with what had arrived.
 */
export async function streamChat(
  model: string,
  messages: ChatMessage[],
  sampling: Sampling,
  { key, signal, onUpdate, now = () => performance.now() }: StreamChatOptions = {},
): Promise<Reply> {
  const reply: Reply = {
    content: '',
    reasoning: '',
    finishReason: null,
    stats: { ttftMs: null, tokensPerSecond: null, completionTokens: null, promptTokens: null, fromUsage: false },
  };
  const sent = now();
  let first: number | null = null;
  let last: number | null = null;
  let chunks = 0;

  let response: Response;
  try {
    response = await fetch('/v1/chat/completions', {
      method: 'POST',
      headers: { ...(key ? { Authorization: `Bearer ${key}` } : authHeaders()), 'Content-Type': 'application/json', Accept: 'text/event-stream' },
      body: JSON.stringify({
        model,
        messages,
        stream: true,
        // Without it OpenAI-style servers send no token count in a stream.
        stream_options: { include_usage: true },
        ...sampling,
      }),
      signal,
    });
  } catch (error) {
    if (signal?.aborted) return reply;
    throw new ChatError(`Cannot reach the Corral engine: ${String(error)}`, 0);
  }
  // A 401 stays in the conversation and never brings up the login: with a key from the settings
  // the sign-in key is still good, and /v1 can want a key where the management API wants none.
  if (!response.ok || !response.body) {
    const error = await errorOf(response);
    throw new ChatError(error.message, response.status);
  }

  const finish = () => {
    const tokens = reply.stats.completionTokens ?? chunks;
    // Generation speed: the tokens after the first over the time they took, so that the prompt's
    // processing (already in the time to first token) does not count twice.
    if (first !== null && last !== null && last > first && tokens > 1) {
      reply.stats.tokensPerSecond = ((tokens - 1) * 1000) / (last - first);
    }
    if (!reply.stats.fromUsage && chunks) reply.stats.completionTokens = chunks;
  };

  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  const parser = new SseParser();
  // Ends a read waiting on a body that the abort has not torn down (the stream is ours to close).
  signal?.addEventListener('abort', () => void reader.cancel().catch(() => {}), { once: true });
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      for (const event of parser.feed(value)) {
        if (event.data.trim() === '[DONE]') continue;
        let chunk: Chunk;
        try {
          chunk = JSON.parse(event.data) as Chunk;
        } catch {
          continue; // Not a completion chunk (a backend's own notice); nothing to show.
        }
        if (chunk.error) {
          const message = typeof chunk.error === 'string' ? chunk.error : (chunk.error.message ?? 'the backend failed');
          throw new ChatError(message, response.status);
        }
        for (const choice of chunk.choices ?? []) {
          const delta = choice.delta ?? {};
          const text = (delta.content ?? '') + (delta.reasoning_content ?? '');
          if (text) {
            const t = now();
            first ??= t;
            last = t;
            chunks++;
            reply.stats.ttftMs ??= t - sent;
          }
          reply.content += delta.content ?? '';
          reply.reasoning += delta.reasoning_content ?? '';
          if (choice.finish_reason) reply.finishReason = choice.finish_reason;
        }
        if (chunk.usage?.completion_tokens != null) {
          reply.stats.completionTokens = chunk.usage.completion_tokens;
          reply.stats.promptTokens = chunk.usage.prompt_tokens ?? null;
          reply.stats.fromUsage = true;
        }
        onUpdate?.(reply);
      }
    }
  } catch (error) {
    if (!signal?.aborted) throw error;
  }
  finish();
  onUpdate?.(reply);
  return reply;
}
