// Server-sent events read with fetch: the browser's EventSource cannot send the Authorization
// header, so the stream is parsed here (the WHATWG event-stream format) and reconnected with
// backoff when it drops.

import { authHeaders, requireLogin } from './auth.svelte';
import { errorOf, unauthorizedMessage, type ApiError } from './api';

export interface SseEvent {
  event: string;
  data: string;
  id?: string;
}

/** Incremental parser: feed it decoded text as it arrives, get back the complete events. */
export class SseParser {
  private buffer = '';
  private event = '';
  private data: string[] = [];
  private hasData = false;
  private id: string | undefined;
  /** A chunk ended in CR: a following LF belongs to the same line break. */
  private pendingCR = false;

  feed(chunk: string): SseEvent[] {
    const out: SseEvent[] = [];
    let text = chunk;
    if (this.pendingCR && text.startsWith('\n')) text = text.slice(1);
    this.pendingCR = false;
    this.buffer += text;
    let start = 0;
    for (let i = 0; i < this.buffer.length; i++) {
      const c = this.buffer.charCodeAt(i);
      if (c !== 10 && c !== 13) continue;
      this.line(this.buffer.slice(start, i), out);
      if (c === 13) {
        if (i + 1 === this.buffer.length) this.pendingCR = true;
        else if (this.buffer.charCodeAt(i + 1) === 10) i++;
      }
      start = i + 1;
    }
    this.buffer = this.buffer.slice(start);
    return out;
  }

  private line(line: string, out: SseEvent[]): void {
    if (line === '') {
      if (this.hasData) {
        out.push({ event: this.event || 'message', data: this.data.join('\n'), id: this.id });
      }
      this.event = '';
      this.data = [];
      this.hasData = false;
      return;
    }
    if (line.startsWith(':')) return; // comment (keep-alive)
    const colon = line.indexOf(':');
    const name = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    switch (name) {
      case 'event':
        this.event = value;
        break;
      case 'data':
        this.data.push(value);
        this.hasData = true;
        break;
      case 'id':
        if (!value.includes('\0')) this.id = value;
        break;
      // `retry` is ignored: the reconnect policy below is the UI's own.
    }
  }
}

export type StreamState = 'connecting' | 'open' | 'reconnecting' | 'unsupported' | 'unauthorized';

export interface StreamOptions {
  onEvent: (event: SseEvent) => void;
  /** Each (re)connection: the stream starts over (a fresh snapshot or the last N lines). */
  onOpen?: () => void;
  onState?: (state: StreamState, error?: ApiError | Error) => void;
  /** First retry delay; doubles up to maxDelayMs. */
  minDelayMs?: number;
  maxDelayMs?: number;
}

/** Follows `url` until closed: reconnects with backoff, stops on 401 (login) and 404 (old engine). */
export function followStream(url: string, options: StreamOptions): { close: () => void } {
  const { onEvent, onOpen, onState, minDelayMs = 500, maxDelayMs = 10_000 } = options;
  let closed = false;
  let controller: AbortController | null = null;
  let timer: ReturnType<typeof setTimeout> | undefined;
  let delay = minDelayMs;
  let first = true;

  async function connect(): Promise<void> {
    controller = new AbortController();
    onState?.(first ? 'connecting' : 'reconnecting');
    first = false;
    try {
      const response = await fetch(url, {
        headers: { ...authHeaders(), Accept: 'text/event-stream' },
        signal: controller.signal,
        cache: 'no-store',
      });
      if (response.status === 401) {
        requireLogin(unauthorizedMessage());
        onState?.('unauthorized', await errorOf(response));
        return;
      }
      if (response.status === 404 || response.status === 405) {
        onState?.('unsupported', await errorOf(response));
        return;
      }
      if (!response.ok || !response.body) throw await errorOf(response);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      const parser = new SseParser();
      delay = minDelayMs;
      onOpen?.();
      onState?.('open');
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        for (const event of parser.feed(value)) onEvent(event);
      }
    } catch (error) {
      if (closed) return;
      onState?.('reconnecting', error as Error);
    }
    if (closed) return;
    onState?.('reconnecting');
    timer = setTimeout(connect, delay);
    delay = Math.min(delay * 2, maxDelayMs);
  }

  void connect();
  return {
    close() {
      closed = true;
      clearTimeout(timer);
      controller?.abort();
    },
  };
}
