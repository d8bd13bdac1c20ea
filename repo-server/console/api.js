// The console's only way to the repository: the public HTTP API, with the signed-in token as a
// bearer header. The token lives in sessionStorage (gone when the tab closes); no cookies.

const KEY = 'backup-console-token';

export function token() {
  return sessionStorage.getItem(KEY);
}

export function setToken(t) {
  if (t) sessionStorage.setItem(KEY, t);
  else sessionStorage.removeItem(KEY);
}

/** An error answer of the API: its stable code and its message for people. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function headers(extra) {
  const h = Object.assign({}, extra || {});
  const t = token();
  if (t) h['Authorization'] = 'Bearer ' + t;
  return h;
}

async function fail(r) {
  let code = 'HTTP_' + r.status;
  let message = r.statusText || ('HTTP ' + r.status);
  try {
    const e = await r.json();
    if (e && e.error) {
      code = e.error.code;
      message = e.error.message;
    }
  } catch (_) { /* not a JSON error body */ }
  throw new ApiError(r.status, code, message);
}

/** A JSON call: GET by default; `body` is sent as JSON. Resolves to the parsed answer (null for 204). */
export async function api(path, opts) {
  const o = opts || {};
  const init = { method: o.method || 'GET', headers: headers(), credentials: 'omit', cache: 'no-store' };
  if (o.body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(o.body);
  }
  const r = await fetch(path, init);
  if (!r.ok) await fail(r);
  if (r.status === 204) return null;
  return r.json();
}

/** Every page of GET /v1/backups (with `query`, e.g. source=...), newest first. */
export async function allBackups(query) {
  let out = [];
  let cursor = null;
  for (;;) {
    const q = new URLSearchParams(query || {});
    q.set('limit', '1000');
    if (cursor) q.set('cursor', cursor);
    const page = await api('/v1/backups?' + q.toString());
    out = out.concat(page.backups);
    if (!page.next) return out;
    cursor = page.next;
  }
}

/**
 * Downloads `size` bytes of `path` in Range requests of `piece` bytes (so a large file shows its
 * progress and a broken connection loses one piece), as a Blob.
 */
export async function download(path, size, onProgress, piece) {
  const step = piece || 4 << 20;
  const parts = [];
  let at = 0;
  if (size === 0) {
    const r = await fetch(path, { headers: headers(), credentials: 'omit', cache: 'no-store' });
    if (!r.ok) await fail(r);
    parts.push(await r.arrayBuffer());
  }
  while (at < size) {
    const last = Math.min(at + step, size) - 1;
    const r = await fetch(path, {
      headers: headers({ Range: 'bytes=' + at + '-' + last }),
      credentials: 'omit',
      cache: 'no-store',
    });
    if (!r.ok) await fail(r);
    const buf = await r.arrayBuffer();
    if (buf.byteLength !== last - at + 1) {
      throw new ApiError(r.status, 'SHORT_READ', 'expected ' + (last - at + 1) + ' bytes at ' + at + ', got ' + buf.byteLength);
    }
    parts.push(buf);
    at = last + 1;
    if (onProgress) onProgress(at, size);
  }
  return new Blob(parts, { type: 'application/octet-stream' });
}
