// A fake engine behind `fetch` for component tests: routes by method and path, records requests,
// and serves event streams the way the real one does.

import { vi } from 'vitest';

export interface Seen {
  method: string;
  path: string;
  headers: Record<string, string>;
  body: unknown;
}

type Handler = (req: Seen) => Response | Promise<Response>;

export function json(value: unknown, status = 200): Response {
  return new Response(JSON.stringify(value), { status, headers: { 'Content-Type': 'application/json' } });
}

/** An event stream that sends `chunks` and then stays open until the test ends. */
export function sse(chunks: string[], keepOpen = true): Response {
  const encoder = new TextEncoder();
  const body = new ReadableStream<Uint8Array>({
    start(controller) {
      for (const chunk of chunks) controller.enqueue(encoder.encode(chunk));
      if (!keepOpen) controller.close();
    },
  });
  return new Response(body, { status: 200, headers: { 'Content-Type': 'text/event-stream' } });
}

export function fakeEngine(routes: Record<string, Handler>) {
  const seen: Seen[] = [];
  const fetchMock = vi.fn(async (input: RequestInfo | URL, init: RequestInit = {}) => {
    const url = new URL(String(input), 'http://corral.test');
    const method = (init.method ?? 'GET').toUpperCase();
    const headers = Object.fromEntries(new Headers(init.headers).entries());
    const body = typeof init.body === 'string' ? JSON.parse(init.body) : undefined;
    const req = { method, path: url.pathname + url.search, headers, body };
    seen.push(req);
    const handler = routes[`${method} ${url.pathname}`] ?? routes[`${method} ${url.pathname}${url.search}`];
    if (!handler) return json({ error: 'not_found', details: `no route ${method} ${url.pathname}` }, 404);
    return handler(req);
  });
  vi.stubGlobal('fetch', fetchMock);
  return { seen, fetchMock };
}

/** An event stream the test writes to as it goes. */
export function liveSse(): { response: Response; push: (chunk: string) => void; close: () => void } {
  const encoder = new TextEncoder();
  let controller!: ReadableStreamDefaultController<Uint8Array>;
  const body = new ReadableStream<Uint8Array>({
    start(c) {
      controller = c;
    },
  });
  return {
    response: new Response(body, { status: 200, headers: { 'Content-Type': 'text/event-stream' } }),
    push: (chunk) => controller.enqueue(encoder.encode(chunk)),
    close: () => controller.close(),
  };
}
