// Hash routes (`#/`, `#/new`, `#/edit/<name>`, `#/logs/<name>`, `#/chat[/<name>]`, `#/models`,
// `#/system`, `#/activity[/<id>][?instance=…&status=…]`, `#/connect`, `#/keys`): they work the
// same from the embedded files, the dev server and the desktop window.

import { takeKeyFromHash } from './auth.svelte';

/** A new instance's form filled in advance (from a model of the library): `#/new?backend=…&model=…`. */
export interface Prefill {
  backend_type: string;
  /** Backend options as the form's inputs hold them (text). */
  backend_options: Record<string, string>;
}

export type Route =
  | { page: 'dashboard' }
  | { page: 'new'; import?: boolean; prefill?: Prefill }
  | { page: 'edit'; name: string }
  | { page: 'logs'; name: string }
  | { page: 'chat'; name?: string }
  /** `download`: a repository to put in the download box (the guided start suggests one). */
  | { page: 'models'; download?: string }
  | { page: 'system' }
  /** The finished requests, filtered; `id`: the one whose details are open. */
  | { page: 'activity'; id?: number; instance?: string; status?: string }
  | { page: 'connect' }
  /** The inference API keys: make, expire, revoke. */
  | { page: 'keys' };

export function parseRoute(hash: string): Route {
  const [path, query = ''] = hash.replace(/^#\/?/, '').split('?');
  const params = new URLSearchParams(query);
  const parts = path.split('/');
  const name = decodeURIComponent(parts[1] ?? '');
  switch (parts[0]) {
    case 'new': {
      const backend = params.get('backend');
      if (!backend) return { page: 'new', import: params.has('import') };
      const backend_options: Record<string, string> = {};
      for (const [key, value] of params) if (key !== 'backend') backend_options[key] = value;
      return { page: 'new', prefill: { backend_type: backend, backend_options } };
    }
    case 'edit':
      return name ? { page: 'edit', name } : { page: 'dashboard' };
    case 'logs':
      return name ? { page: 'logs', name } : { page: 'dashboard' };
    case 'chat':
      return name ? { page: 'chat', name } : { page: 'chat' };
    case 'models': {
      const download = params.get('download');
      return download ? { page: 'models', download } : { page: 'models' };
    }
    case 'system':
      return { page: 'system' };
    case 'activity': {
      const route: Extract<Route, { page: 'activity' }> = { page: 'activity' };
      if (/^\d+$/.test(parts[1] ?? '')) route.id = Number(parts[1]);
      if (params.get('instance')) route.instance = params.get('instance')!;
      if (params.get('status')) route.status = params.get('status')!;
      return route;
    }
    case 'connect':
      return { page: 'connect' };
    case 'keys':
      return { page: 'keys' };
    default:
      return { page: 'dashboard' };
  }
}

export function href(route: Route): string {
  switch (route.page) {
    case 'dashboard':
      return '#/';
    case 'new':
      if (route.prefill) {
        const params = new URLSearchParams({ backend: route.prefill.backend_type, ...route.prefill.backend_options });
        return `#/new?${params}`;
      }
      return route.import ? '#/new?import' : '#/new';
    case 'edit':
    case 'logs':
      return `#/${route.page}/${encodeURIComponent(route.name)}`;
    case 'chat':
      return route.name ? `#/chat/${encodeURIComponent(route.name)}` : '#/chat';
    case 'models':
      return route.download ? `#/models?${new URLSearchParams({ download: route.download })}` : '#/models';
    case 'activity': {
      const params = new URLSearchParams();
      if (route.instance) params.set('instance', route.instance);
      if (route.status) params.set('status', route.status);
      const query = params.toString();
      return `#/activity${route.id != null ? `/${route.id}` : ''}${query ? `?${query}` : ''}`;
    }
    default:
      return `#/${route.page}`;
  }
}

export const router = $state({ route: parseRoute(location.hash) as Route });

export function navigate(route: Route): void {
  location.hash = href(route);
}

export function listen(): () => void {
  const update = () => {
    // A key handed over while the page is open (the desktop window re-opening it) signs in too.
    if (location.hash.startsWith('#key=')) takeKeyFromHash();
    router.route = parseRoute(location.hash);
  };
  window.addEventListener('hashchange', update);
  return () => window.removeEventListener('hashchange', update);
}
