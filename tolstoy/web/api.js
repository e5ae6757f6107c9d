// The public REST API, called with the session cookie (same origin; never an API key).

export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details || [];
  }

  /** The message with field-level details, for a person to read. */
  describe() {
    const fields = this.details.map((d) => `${d.field}: ${d.message}`);
    return fields.length ? `${this.message} (${fields.join("; ")})` : this.message;
  }
}

const listeners = new Set();

/** Called with no argument whenever a request comes back 401 (the session is over). */
export function onUnauthorized(callback) {
  listeners.add(callback);
  return () => listeners.delete(callback);
}

export async function request(method, path, body) {
  const init = { method, headers: { Accept: "application/json" }, credentials: "same-origin" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (err) {
    throw new ApiError(0, "network", `cannot reach the server (${err.message})`);
  }
  if (resp.status === 204) return null;
  let data = null;
  try {
    data = await resp.json();
  } catch {
    data = null;
  }
  if (!resp.ok) {
    const err = (data && data.error) || {};
    if (resp.status === 401) for (const cb of listeners) cb();
    throw new ApiError(resp.status, err.code || "error", err.message || resp.statusText, err.details);
  }
  return data;
}

export const api = {
  get: (path) => request("GET", path),
  post: (path, body) => request("POST", path, body),
};

/** "/path?a=1&b=2", leaving out empty values. */
export function withQuery(path, params) {
  const q = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") q.set(key, value);
  }
  const s = q.toString();
  return s ? `${path}?${s}` : path;
}
