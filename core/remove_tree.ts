/**
 * Synchronous removal of a directory tree, for signal handlers that must clean
 * up before they exit.
 */

/**
 * Removes `path` and everything under it, retrying while it is not empty: a
 * signal handler runs between awaits, so a write already dispatched to another
 * thread may add a file after the removal listed the tree ("directory not
 * empty"); none can once the directory itself is gone. Returns true when the
 * tree is gone, false when it still stood after `ms` milliseconds.
 */
export function removeTreeSync(path: string, ms = 2000): boolean {
  const until = performance.now() + ms;
  do {
    try {
      Deno.removeSync(path, { recursive: true });
      return true;
    } catch (err) {
      if (err instanceof Deno.errors.NotFound) return true;
    }
  } while (performance.now() < until);
  return false;
}
