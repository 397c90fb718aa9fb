// Hash routes (`#/`, `#/new`, `#/edit/<name>`, `#/logs/<name>`, `#/system`, `#/connect`): they
// work the same from the embedded files, the dev server and the desktop window.

import { takeKeyFromHash } from './auth.svelte';

export type Route =
  | { page: 'dashboard' }
  | { page: 'new'; import?: boolean }
  | { page: 'edit'; name: string }
  | { page: 'logs'; name: string }
  | { page: 'system' }
  | { page: 'connect' };

export function parseRoute(hash: string): Route {
  const [path, query = ''] = hash.replace(/^#\/?/, '').split('?');
  const parts = path.split('/');
  const name = decodeURIComponent(parts[1] ?? '');
  switch (parts[0]) {
    case 'new':
      return { page: 'new', import: query.split('&').includes('import') };
    case 'edit':
      return name ? { page: 'edit', name } : { page: 'dashboard' };
    case 'logs':
      return name ? { page: 'logs', name } : { page: 'dashboard' };
    case 'system':
      return { page: 'system' };
    case 'connect':
      return { page: 'connect' };
    default:
      return { page: 'dashboard' };
  }
}

export function href(route: Route): string {
  switch (route.page) {
    case 'dashboard':
      return '#/';
    case 'new':
      return route.import ? '#/new?import' : '#/new';
    case 'edit':
    case 'logs':
      return `#/${route.page}/${encodeURIComponent(route.name)}`;
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
