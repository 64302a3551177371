// A value with listeners, and the hook that re-renders a component when it changes.
import { useEffect, useState } from 'preact/hooks';

export type Signal<T> = {
  get(): T;
  set(v: T): void;
  subscribe(fn: (v: T) => void): () => void;
};

export function signal<T>(initial: T): Signal<T> {
  let value = initial;
  const listeners = new Set<(v: T) => void>();
  return {
    get: () => value,
    set(v: T) {
      if (v === value) return;
      value = v;
      for (const fn of [...listeners]) fn(v);
    },
    subscribe(fn) {
      listeners.add(fn);
      return () => listeners.delete(fn);
    },
  };
}

export function useSignal<T>(s: Signal<T>): T {
  const [, force] = useState(0);
  useEffect(() => s.subscribe(() => force((n) => n + 1)), [s]);
  return s.get();
}
