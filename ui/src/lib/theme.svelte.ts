// Light or dark: follows the system unless the user picked one (kept in localStorage).

export type ThemeChoice = 'system' | 'light' | 'dark';
const KEY = 'corral.theme';

function load(): ThemeChoice {
  try {
    const value = localStorage.getItem(KEY);
    if (value === 'light' || value === 'dark') return value;
  } catch {
    // No storage: follow the system.
  }
  return 'system';
}

export const theme = $state({ choice: load() });

export function applyTheme(): void {
  const root = document.documentElement;
  if (theme.choice === 'system') root.removeAttribute('data-theme');
  else root.setAttribute('data-theme', theme.choice);
}

export function effectiveTheme(): 'light' | 'dark' {
  if (theme.choice !== 'system') return theme.choice;
  return matchMedia?.('(prefers-color-scheme: dark)').matches ? 'dark' : 'light';
}

/** Flips between light and dark, starting from what is shown now. */
export function toggleTheme(): void {
  theme.choice = effectiveTheme() === 'dark' ? 'light' : 'dark';
  try {
    localStorage.setItem(KEY, theme.choice);
  } catch {
    // Kept for this page only.
  }
  applyTheme();
}
