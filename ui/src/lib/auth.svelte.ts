// The management key of this browser session: from the desktop window's `#key=` handoff, the
// login form, or sessionStorage; and whether the UI must ask for it.

const STORAGE_KEY = 'corral.key';

function stored(): string {
  try {
    return sessionStorage.getItem(STORAGE_KEY) ?? '';
  } catch {
    // Storage can be disabled (privacy modes); the key then lives only as long as the page.
    return '';
  }
}

export const auth = $state({
  key: stored(),
  /** Set when the engine answered 401: the login is shown with this message. */
  needed: false,
  message: '',
});

export function setKey(key: string): void {
  auth.key = key;
  auth.needed = false;
  auth.message = '';
  try {
    if (key) sessionStorage.setItem(STORAGE_KEY, key);
    else sessionStorage.removeItem(STORAGE_KEY);
  } catch {
    // See stored().
  }
}

export function requireLogin(message: string): void {
  auth.needed = true;
  auth.message = message;
}

export function logout(): void {
  setKey('');
  requireLogin('Signed out. Enter the management key to continue.');
}

/**
 * Takes `#key=<key>` off the address (the desktop window opens the UI that way) so the key is not
 * left in the history or shown to someone looking over a shoulder. Returns the rest of the hash.
 */
export function takeKeyFromHash(): void {
  const hash = location.hash;
  if (!hash.startsWith('#key=')) return;
  const key = decodeURIComponent(hash.slice('#key='.length).split('&')[0]);
  if (key) setKey(key);
  history.replaceState(null, '', location.pathname + location.search + '#/');
}

export function authHeaders(): Record<string, string> {
  return auth.key ? { Authorization: `Bearer ${auth.key}` } : {};
}
