// The live connection (PROTOCOL.md §3): one WebSocket, many channel subscriptions.
//
// The socket authenticates with a short-lived subscribe token minted for this
// session (POST /api/v1/tokens/subscribe); a fresh one is fetched for every
// connection attempt. On any disconnect it reconnects with exponential backoff
// and jitter and resubscribes every channel with `since` = what the subscriber
// last saw, so the server replays the gap; subscribers dedupe by event id.

const BACKOFF_BASE_MS = 500;
const BACKOFF_MAX_MS = 15_000;
const PING_EVERY_MS = 20_000;
const SILENT_LIMIT_MS = 45_000;
const TOKEN_TTL_S = 300;
const CONTROL = new Set(["subscribed", "unsubscribed", "pong", "error"]);

export const LiveState = Object.freeze({
  IDLE: "idle",
  CONNECTING: "connecting",
  OPEN: "open",
  RECONNECTING: "reconnecting",
  CLOSED: "closed",
});

export class Live extends EventTarget {
  /**
   * @param {object} options
   * @param {() => Promise<string>} options.token  mints a subscribe token
   * @param {string} [options.url]                 the WebSocket URL (default: this origin's /ws)
   */
  constructor({ token, url }) {
    super();
    this.mintToken = token;
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    this.url = url || `${scheme}://${location.host}/ws`;
    this.subs = new Map();
    this.ws = null;
    this.state = LiveState.IDLE;
    this.attempt = 0;
    this.timer = null;
    this.pinger = null;
    this.lastHeard = 0;
    this.requestSeq = 0;
    this.closed = false;
    this.connecting = false;
    this.onOnline = () => this.reconnectNow();
    window.addEventListener("online", this.onOnline);
  }

  /**
   * Subscribe to ``channel``. ``since()`` is asked at every (re)subscribe for the resume point;
   * ``onEvent(event, message)`` gets each event, ``onSubscribed(data)`` each confirmation (with the
   * snapshot on per-execution channels), ``onError(error)`` a refusal. Returns an unsubscribe function.
   */
  subscribe(channel, { since, filters, onEvent, onSubscribed, onError } = {}) {
    const sub = { channel, since, filters, onEvent, onSubscribed, onError, requestId: null };
    this.subs.set(channel, sub);
    if (this.state === LiveState.OPEN) this.sendSubscribe(sub);
    else this.connect();
    return () => {
      if (this.subs.get(channel) !== sub) return;
      this.subs.delete(channel);
      if (this.state === LiveState.OPEN) this.send({ type: "unsubscribe", data: { channel } });
    };
  }

  close() {
    this.closed = true;
    window.removeEventListener("online", this.onOnline);
    clearTimeout(this.timer);
    clearInterval(this.pinger);
    if (this.ws) this.ws.close(1000, "bye");
    this.setState(LiveState.CLOSED);
  }

  setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.dispatchEvent(new CustomEvent("state", { detail: state }));
  }

  async connect() {
    if (this.closed || this.ws || this.connecting) return;
    clearTimeout(this.timer);
    this.setState(this.attempt ? LiveState.RECONNECTING : LiveState.CONNECTING);
    this.connecting = true;
    let token;
    try {
      token = await this.mintToken();
    } catch (err) {
      this.dispatchEvent(new CustomEvent("tokenerror", { detail: err }));
      this.scheduleReconnect();
      return;
    } finally {
      this.connecting = false;
    }
    if (this.closed) return;
    const ws = new WebSocket(`${this.url}?token=${encodeURIComponent(token)}`);
    this.ws = ws;
    ws.onopen = () => this.onOpen(ws);
    ws.onmessage = (msg) => this.onMessage(ws, msg);
    ws.onclose = (ev) => this.onClose(ws, ev);
  }

  onOpen(ws) {
    if (ws !== this.ws) return;
    this.lastHeard = Date.now();
    this.setState(LiveState.OPEN);
    for (const sub of this.subs.values()) this.sendSubscribe(sub);
    clearInterval(this.pinger);
    this.pinger = setInterval(() => this.keepAlive(), PING_EVERY_MS);
  }

  keepAlive() {
    if (!this.ws || this.state !== LiveState.OPEN) return;
    if (Date.now() - this.lastHeard > SILENT_LIMIT_MS) {
      this.ws.close(4000, "silent");  // a dead path: onclose reconnects
      return;
    }
    this.send({ type: "ping", data: {} });
  }

  onClose(ws, ev) {
    if (ws !== this.ws) return;
    this.ws = null;
    clearInterval(this.pinger);
    if (this.closed) return;
    this.dispatchEvent(new CustomEvent("disconnect", { detail: { code: ev.code, reason: ev.reason } }));
    this.scheduleReconnect();
  }

  scheduleReconnect() {
    if (this.closed) return;
    this.setState(LiveState.RECONNECTING);
    const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** this.attempt);
    this.attempt += 1;
    const delay = ceiling / 2 + Math.random() * (ceiling / 2);
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.connect(), delay);
  }

  reconnectNow() {
    if (this.closed || this.state === LiveState.OPEN) return;
    this.attempt = 0;
    clearTimeout(this.timer);
    this.connect();
  }

  /** Drop the connection as if the network failed (used by tests and the "reconnect" control). */
  drop() {
    if (this.ws) this.ws.close(4000, "dropped by client");
  }

  send(message) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(message));
  }

  sendSubscribe(sub) {
    const data = { channel: sub.channel };
    const since = sub.since ? sub.since() : undefined;
    if (since !== undefined && since !== null) data.since = since;
    if (sub.filters) data.filters = sub.filters;
    this.requestSeq += 1;
    sub.requestId = `sub-${this.requestSeq}`;
    this.send({ type: "subscribe", id: sub.requestId, data });
  }

  onMessage(ws, msg) {
    if (ws !== this.ws) return;
    this.lastHeard = Date.now();
    let message;
    try {
      message = JSON.parse(msg.data);
    } catch {
      return;
    }
    if (!message || typeof message !== "object") return;
    const data = message.data || {};
    if (message.type === "subscribed") {
      this.attempt = 0;
      const sub = this.subs.get(data.channel);
      if (sub && sub.onSubscribed) sub.onSubscribed(data);
    } else if (message.type === "error") {
      const sub = [...this.subs.values()].find((s) => s.requestId && s.requestId === message.id);
      if (sub && sub.onError) sub.onError(data);
      else console.warn("tolstoy live:", data.code, data.message);
    } else if (!CONTROL.has(message.type)) {
      const sub = this.subs.get(message.channel);
      if (sub && sub.onEvent) sub.onEvent(data, message);
    }
  }
}

/** A token provider for ``Live``: mints a subscribe token for the dashboard's channels. */
export function subscribeTokens(api, channels) {
  return async () => {
    const body = await api.post("/api/v1/tokens/subscribe", { channels, ttlSeconds: TOKEN_TTL_S });
    return body.token;
  };
}
