// Short messages about what just happened (an action failed, a copy worked).

export interface Toast {
  id: number;
  kind: 'info' | 'error' | 'warning';
  text: string;
}

export const toasts = $state({ list: [] as Toast[] });
let next = 1;

export function toast(text: string, kind: Toast['kind'] = 'info', ms = kind === 'error' ? 8000 : 3500) {
  const id = next++;
  toasts.list.push({ id, kind, text });
  setTimeout(() => dismiss(id), ms);
}

export function dismiss(id: number): void {
  toasts.list = toasts.list.filter((t) => t.id !== id);
}
