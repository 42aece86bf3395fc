/*!
 * atmosphere-client.js: a small browser client for flask-atmosphere.
 *
 * It speaks the wire protocol of the official Atmosphere JavaScript client
 * (the 5.x line, with the protocol handshake and message-length tracking on),
 * so it also works against other Atmosphere servers. No dependencies and no
 * build step: plain ES2017, one global, `AtmosphereClient`.
 *
 *     const chat = new AtmosphereClient('/the-chat', { transport: 'websocket' });
 *     chat.on('open', transport => console.log('connected over', transport));
 *     chat.on('message', text => console.log('got', text));
 *     chat.on('refused', ({status, reason}) => console.log('not let in:', status, reason));
 *     chat.connect();
 *     chat.send({ author: 'me', message: 'hi' });   // objects are JSON.stringify'd
 *
 * Section numbers (§) refer to atmosphere-protocol.md, the description of the
 * official clients' wire protocol that flask-atmosphere follows.
 *
 * How a connection works, in short:
 *   1. Every request carries the Atmosphere parameters in its query string
 *      (§1.1), and `X-Atmosphere-Offset=<n>`: how many messages the client got
 *      from its current tracking id (a flask-atmosphere extension, see 6.).
 *   2. The server's first message is the handshake `<uuid>|<heartbeatMs>|<padding>|`,
 *      length-framed like every other message (§2.2, §2.4); the uuid becomes the
 *      tracking id of every later request, and `open` fires. A handshake with
 *      another uuid than the client had starts a new session: the count of
 *      messages starts again at 0.
 *   3. Everything the server writes is framed as `<length>|<payload>` where the
 *      length counts UTF-16 code units, i.e. JavaScript string length (§3).
 *      Whitespace between frames is a heartbeat: no message, but it shows the
 *      connection is alive. With a non-empty padding in the handshake (e.g. `X`
 *      from a Java server), messages equal to the padding are heartbeats too and
 *      dropped; flask-atmosphere names an empty padding, so every framed message
 *      is delivered, even `X` or an empty one.
 *   4. Messages go upstream as WebSocket text frames, or as POSTs to the same
 *      URL for the HTTP transports (§4.1, §4.6). Client heartbeats (only if the
 *      handshake asks for them) are the padding, so possibly empty.
 *   5. Transports are tried in order (websocket, sse, streaming, long-polling);
 *      one that fails before it opens makes way for the next (§7.3). A connection
 *      that drops after it opened is reconnected with the same tracking id, with
 *      exponential backoff (§7.3).
 *   6. Acknowledgements: since every request says how many messages the client
 *      got, a flask-atmosphere server sends again, first and in order, what it
 *      sent after that: whatever a drop lost arrives once, in order.
 *   7. Refusals: the server refuses with an HTTP status, the reason in the
 *      `X-Atmosphere-error` header (and the body), maybe `Retry-After` (§8.1):
 *        - 4xx but 408 and 429 (not allowed, not logged in, 410: the app closed
 *          this client): the client stops for good, state 'closed', and emits
 *          `error` (err.status, err.reason) and `refused` ({status, reason, transport});
 *        - 429, 503: try later: the next attempt waits at least `Retry-After`;
 *        - 501: the transport is not available: the next one is tried (if none
 *          is left, it is a refusal);
 *        - anything else: the usual reconnect.
 *      A browser hides the status of a failed WebSocket or EventSource, so the
 *      client then sends a probe: a GET of the same URL with
 *      `X-Atmosphere-Transport=websocket` and no upgrade, which the server
 *      answers with the refusal, if any, else 501.
 */
(function (global) {
  'use strict';

  /**
   * X-Atmosphere-Framework. It is the 5.x client's VERSION constant, and it
   * must stay a plain `a.b.c`: servers parse it to decide whether the client
   * speaks the handshake (>= 2.2.1) and whether a reconnect gets the handshake
   * again (major >= 5) (§1.1, §2.1, §2.7).
   */
  const FRAMEWORK_VERSION = '5.0.7';

  /** Separates the handshake fields and ends every length prefix (§2.2, §3.1). */
  const DELIMITER = '|';

  /** The heartbeat padding until the handshake names another one (§5.1). */
  const DEFAULT_PADDING = 'X';

  /** The transports, in the default order of negotiation (§7). */
  const TRANSPORTS = ['websocket', 'sse', 'streaming', 'long-polling'];

  /**
   * A handshake after length framing is removed: `<uuid>|<heartbeatMs>|<padding>|`
   * (§2.2). The uuid follows the server's rule for tracking ids (§2.6). Being
   * strict here means an application message is never mistaken for a
   * handshake, a hazard of the official 5.x client after reconnects (§2.7).
   */
  const HANDSHAKE = /^([A-Za-z0-9_-]{1,128})\|(\d+)\|([^|]*)\|$/;

  const DEFAULTS = {
    transport: null,          // the transport to start with; null: the first of `transports`
    transports: TRANSPORTS,   // the transports to try, in order
    contentType: 'application/json', // sent as the Content-Type parameter and on POSTs
    headers: {},              // extra query parameters, sent with every request (§1.1 #8)
    heartbeatServer: null,    // seconds; sent as X-Heartbeat-Server, 0 asks for none (§5.1)
    reconnect: true,          // reconnect after a drop (and retry when nothing connects)
    reconnectInterval: 1000,  // ms: the first backoff step; it doubles each attempt
    maxReconnectInterval: 30000, // ms: the cap of the backoff
    maxReconnectAttempts: Infinity, // consecutive failed attempts before giving up
    connectTimeout: 10000,    // ms a transport may take to open before the next is tried
    inactivityTimeout: 0,     // ms without any data (heartbeats count) before
                              // the connection is considered dead; 0: never
    withCredentials: false,   // send cookies cross-origin (fetch, EventSource)
    closeOnUnload: true,      // close the connection when the page goes away
  };

  // ---------------------------------------------------------------------------
  // Length framing (§3)
  // ---------------------------------------------------------------------------

  /**
   * Splits a stream of text into messages framed as `<length>|<payload>`.
   *
   * Data arrives in pieces (WebSocket frames, stream chunks, SSE events,
   * long-poll bodies); a piece may hold several messages or part of one. The
   * length counts UTF-16 code units, which is exactly what JavaScript's
   * String length and slice() count, so no encoding work is needed (§3.1).
   */
  class FrameParser {
    constructor() {
      this.buffer = '';
    }

    /**
     * Add a piece of data and return the messages it completes.
     * @param {string} text
     * @returns {string[]}
     * @throws {Error} when a length prefix is not a number (the stream is
     *   out of step and cannot be trusted any more).
     */
    push(text) {
      let data = this.buffer + text;
      const messages = [];
      for (;;) {
        // Whitespace before a length is harmless: servers may pad the start of
        // a response with spaces to get it through buffering proxies (§3.2, §4.2).
        data = data.replace(/^\s+/, '');
        if (data === '') break;
        const bar = data.indexOf(DELIMITER);
        if (bar < 0) {
          if (/^\d+$/.test(data)) break; // a length cut in two: wait for the rest
          // Unframed text (e.g. a bare heartbeat `X`): the official clients
          // deliver it as it is (§3.2).
          messages.push(data);
          data = '';
          break;
        }
        const prefix = data.slice(0, bar);
        if (!/^\d+$/.test(prefix)) {
          this.buffer = '';
          throw new Error('message length "' + prefix.slice(0, 20) + '" is not a number');
        }
        const length = parseInt(prefix, 10);
        const start = bar + DELIMITER.length;
        if (data.length < start + length) break; // incomplete: wait for more
        messages.push(data.slice(start, start + length));
        data = data.slice(start + length);
      }
      this.buffer = data;
      return messages;
    }
  }

  // ---------------------------------------------------------------------------
  // Transports. Each is one attempt to hold a connection (a "link"): start()
  // opens it, write(text) sends a message upstream, stop() ends it. A link
  // reports what it receives with received(text) and its end with failed(reason);
  // after either stop() or failed() it is dead and reports nothing more.
  // ---------------------------------------------------------------------------

  class Link {
    constructor(client, name) {
      this.client = client;
      this.name = name;
      this.open = false; // set by the client once the handshake arrived
      this.up = false;   // the transport itself is connected (socket open, headers in)
      this.dead = false;
    }

    /** The connection URL, with the current tracking id (§1.1). */
    url() {
      return this.client._buildUrl(this.name);
    }

    received(text) {
      if (!this.dead) this.client._received(this, text);
    }

    failed(reason) {
      if (this.dead) return;
      this.stop();
      this.client._lost(this, reason);
    }

    /** Send upstream as a POST to the connection URL, in order (§4.6). */
    write(text) {
      this.client._post(this, text);
    }

    stop() {
      this.dead = true;
    }
  }

  /** WebSocket (§4.1): one text frame per message, both ways. */
  class WebSocketLink extends Link {
    start() {
      // The same URL with ws: or wss:; Content-Type goes in raw (§1.1 #6).
      const url = new URL(this.url(), global.location.href);
      url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
      const ws = (this.ws = new WebSocket(url.href));
      ws.binaryType = 'arraybuffer';
      ws.onopen = () => { this.up = true; };
      ws.onmessage = event => {
        if (typeof event.data === 'string') this.received(event.data);
        else if (!this.dead) this.client._emit('message', event.data); // binary: untouched
      };
      // 'close' always follows 'error', so the end is reported once, from here.
      ws.onclose = event =>
        this.failed('WebSocket closed (' + event.code + (event.reason ? ' ' + event.reason : '') + ')');
    }

    write(text) {
      this.ws.send(text);
    }

    stop() {
      super.stop();
      const ws = this.ws;
      if (!ws) return;
      ws.onmessage = ws.onclose = null;
      if (ws.readyState === WebSocket.CONNECTING || ws.readyState === WebSocket.OPEN) {
        ws.close(1000);
      }
    }
  }

  /** Server-Sent Events (§4.4): one `data:` event per write; POSTs upstream. */
  class SSELink extends Link {
    start() {
      const es = (this.es = new EventSource(this.url(), {
        withCredentials: this.client.options.withCredentials,
      }));
      es.onopen = () => { this.up = true; };
      es.onmessage = event => this.received(event.data);
      // EventSource would reconnect by itself, without our tracking id and
      // backoff, so any error ends this link and the client decides (§4.4).
      es.onerror = () => this.failed(this.open ? 'SSE connection lost' : 'SSE connection failed');
    }

    stop() {
      super.stop();
      if (this.es) {
        this.es.onmessage = this.es.onerror = null;
        this.es.close();
      }
    }
  }

  /** HTTP streaming (§4.3): one long GET response read as it arrives; POSTs upstream. */
  class StreamingLink extends Link {
    start() {
      this.abort = new AbortController();
      this._run().catch(err => this.failed(describe(err)));
    }

    async _run() {
      const response = await fetch(this.url(), this.client._fetchOptions('GET', this.abort));
      if (!response.ok || !response.body) throw new Error('HTTP ' + response.status);
      this.up = true;
      const reader = response.body.getReader();
      // stream: true keeps a UTF-8 sequence split between chunks intact.
      const decoder = new TextDecoder();
      for (;;) {
        const { done, value } = await reader.read();
        if (this.dead) return;
        if (done) return this.failed('stream ended');
        this.received(decoder.decode(value, { stream: true }));
      }
    }

    stop() {
      super.stop();
      if (this.abort) this.abort.abort();
    }
  }

  /**
   * Long-polling (§4.2): a GET that the server holds until it has something,
   * then answers; the next GET goes out at once. The first GET (tracking id 0)
   * is answered with the handshake alone (§2.3). POSTs upstream.
   */
  class LongPollingLink extends Link {
    start() {
      this.abort = new AbortController();
      this._run().catch(err => this.failed(describe(err)));
    }

    async _run() {
      while (!this.dead) {
        // url() each time: the tracking id changes after the handshake (§2.6).
        const response = await fetch(this.url(), this.client._fetchOptions('GET', this.abort));
        if (!response.ok) throw new Error('HTTP ' + response.status);
        this.up = true;
        // With a tracking id, the server does not answer with a handshake but
        // holds the poll until it has something to say, which may take long.
        // Like the 5.x client, count the link as open once the headers are in
        // (servers flush them at once, §4.2).
        if (!this.open && this.client.uuid !== '0') this.client._linkOpened(this);
        const body = await response.text();
        if (this.dead) return;
        if (body !== '') this.received(body); // an empty body: a timeout, poll again
        // A server without the handshake: the first answered poll opens the link.
        if (!this.open && !this.dead) this.client._linkOpened(this);
      }
    }

    stop() {
      super.stop();
      if (this.abort) this.abort.abort();
    }
  }

  const LINKS = {
    websocket: WebSocketLink,
    sse: SSELink,
    streaming: StreamingLink,
    'long-polling': LongPollingLink,
  };

  /** Whether this browser can run a transport at all. */
  function supported(name) {
    switch (name) {
      case 'websocket': return typeof WebSocket === 'function';
      case 'sse': return typeof EventSource === 'function';
      case 'streaming':
        return typeof fetch === 'function' && typeof ReadableStream === 'function' &&
          typeof TextDecoder === 'function' && typeof AbortController === 'function';
      case 'long-polling': return typeof fetch === 'function' && typeof AbortController === 'function';
      default: return false;
    }
  }

  function describe(err) {
    return (err && err.message) || String(err);
  }

  // ---------------------------------------------------------------------------
  // The client
  // ---------------------------------------------------------------------------

  /**
   * A connection to one Atmosphere route that survives drops.
   *
   * Properties (read-only):
   *   transport  the transport in use or being tried ('websocket', 'sse',
   *              'streaming', 'long-polling'), or null before connect()
   *   state      'idle', 'connecting', 'open', 'reconnecting' or 'closed'
   *   uuid       the tracking id the server gave in the handshake ('0' before)
   *
   * Events (subscribe with on(name, fn), or pass onOpen, onMessage, ... in the options):
   *   open(transport)          connected (again), the handshake received
   *   message(text)            a message from the server (heartbeats are dropped)
   *   close(reason)            an open connection ended (a reconnect may follow)
   *   error(err)               something failed: an upstream POST, a garbled
   *                            stream, no transport could connect, gave up reconnecting
   *   reconnect({attempt, delay, transport})  a reconnect is scheduled
   *   transportFailure(reason, transport)     a transport failed before it
   *                            opened; the next one in order is tried
   */
  class AtmosphereClient {
    /**
     * @param {string} url  the route's URL, absolute or relative to the page
     * @param {object} [options]  see DEFAULTS above
     */
    constructor(url, options) {
      this.url = url;
      this.options = Object.assign({}, DEFAULTS, options || {});
      this.transport = null;
      this.state = 'idle';
      this.uuid = '0';
      this._listeners = {};
      this._link = null;        // the current link, or null between attempts
      this._order = [];         // the transports of the current negotiation
      this._next = 0;           // index in _order of the transport to try next
      this._everOpened = false; // whether any link opened since connect()
      this._attempt = 0;        // consecutive failed attempts, for the backoff
      this._timers = {};        // connect, reconnect, inactivity, heartbeat
      this._outbox = [];        // messages sent while not connected
      this._posts = Promise.resolve(); // keeps upstream POSTs in order
      this._onPageHide = () => this.close();
      for (const name of ['open', 'message', 'close', 'error', 'reconnect', 'transportFailure']) {
        const callback = this.options['on' + name[0].toUpperCase() + name.slice(1)];
        if (typeof callback === 'function') this.on(name, callback);
      }
    }

    // -- public API -----------------------------------------------------------

    /** Subscribe `fn` to event `name`; returns the client, for chaining. */
    on(name, fn) {
      (this._listeners[name] = this._listeners[name] || []).push(fn);
      return this;
    }

    /** Unsubscribe `fn` from event `name`. */
    off(name, fn) {
      const list = this._listeners[name] || [];
      const i = list.indexOf(fn);
      if (i >= 0) list.splice(i, 1);
      return this;
    }

    /** Start connecting (no-op unless idle or closed); returns the client. */
    connect() {
      if (this.state !== 'idle' && this.state !== 'closed') return this;
      const wanted = this.options.transports.filter(name => LINKS[name] && supported(name));
      const start = this.options.transport ? wanted.indexOf(this.options.transport) : 0;
      if (this.options.transport && start < 0 && LINKS[this.options.transport]) {
        wanted.unshift(this.options.transport); // forced but not in the list: try it first
      }
      this._order = wanted.slice(Math.max(start, 0));
      if (this._order.length === 0) {
        this.state = 'closed';
        this._emit('error', new Error('no usable transport among ' + this.options.transports.join(', ')));
        return this;
      }
      this.state = 'connecting';
      this.uuid = '0';
      this._everOpened = false;
      this._attempt = 0;
      this._next = 0;
      if (this.options.closeOnUnload && global.addEventListener) {
        global.addEventListener('pagehide', this._onPageHide);
      }
      this._tryNextTransport();
      return this;
    }

    /**
     * Send a message: a string as it is, anything else as JSON. Over WebSocket
     * it is a text frame, otherwise a POST to the connection URL (§4.1, §4.6).
     * While (re)connecting, messages wait and go out in order once open.
     */
    send(data) {
      const text = typeof data === 'string' ? data : JSON.stringify(data);
      if (this.state === 'closed') throw new Error('AtmosphereClient: send() after close()');
      if (this.state === 'open' && this._link && this._link.open) this._write(text);
      else this._outbox.push(text);
    }

    /** Close the connection for good (call connect() to start again). */
    close() {
      if (this.state === 'closed' || this.state === 'idle') return;
      const wasOpen = this.state === 'open' || this.state === 'reconnecting';
      const link = this._link;
      this._link = null;
      this._closed();
      if (link) {
        link.stop();
        // The 5.x client sends no close request; the legacy one does (§4.7). It
        // tells an HTTP server at once that this tracking id is gone, instead
        // of after its grace period. A WebSocket close says it by itself.
        if (link.open && link.name !== 'websocket') this._sendCloseRequest();
      }
      if (wasOpen) this._emit('close', 'closed by the client');
    }

    /** Enter the 'closed' state: no link, no timers, nothing waiting. */
    _closed() {
      this.state = 'closed';
      this._outbox = [];
      this._clearTimers();
      if (global.removeEventListener) global.removeEventListener('pagehide', this._onPageHide);
    }

    // -- building requests (§1) -------------------------------------------------

    /**
     * The connection URL for `transport`: the Atmosphere parameters in the
     * order of the official clients (§1.1), then the user's `headers`.
     */
    _buildUrl(transport) {
      const o = this.options;
      const params = [
        ['X-Atmosphere-tracking-id', encodeURIComponent(this.uuid)],
        ['X-Atmosphere-Framework', FRAMEWORK_VERSION],
        ['X-Atmosphere-Transport', transport],
        ['X-Atmosphere-TrackMessageSize', 'true'],
      ];
      if (o.heartbeatServer !== null && o.heartbeatServer !== undefined) {
        params.push(['X-Heartbeat-Server', String(o.heartbeatServer)]);
      }
      if (o.contentType) {
        // Raw on WebSocket URLs, encoded otherwise, as the official clients do (§1.1 #6).
        params.push(['Content-Type',
          transport === 'websocket' ? o.contentType : encodeURIComponent(o.contentType)]);
      }
      params.push(['X-atmo-protocol', 'true']);
      for (const name of Object.keys(o.headers || {})) {
        let value = o.headers[name];
        if (typeof value === 'function') value = value();
        params.push([encodeURIComponent(name), encodeURIComponent(value)]);
      }
      return this._withQuery(params.map(p => p[0] + '=' + p[1]).join('&'));
    }

    _withQuery(query) {
      return this.url + (this.url.indexOf('?') >= 0 ? '&' : '?') + query;
    }

    _fetchOptions(method, abort, body) {
      const options = {
        method: method,
        cache: 'no-store',
        credentials: this.options.withCredentials ? 'include' : 'same-origin',
      };
      if (abort) options.signal = abort.signal;
      if (body !== undefined) {
        options.body = body;
        options.headers = { 'Content-Type': this.options.contentType || 'text/plain' };
      }
      return options;
    }

    // -- negotiation and reconnection (§7) ----------------------------------------

    /** Try the next transport of the negotiation, or give up on this round. */
    _tryNextTransport() {
      if (this._next >= this._order.length) {
        this._next = 0;
        const err = new Error('could not connect with any transport (' + this._order.join(', ') + ')');
        this._emit('error', err);
        this._scheduleReconnect(this._order[0]);
        return;
      }
      this.uuid = '0'; // a new transport starts a new session (§7.3)
      this._startLink(this._order[this._next++]);
    }

    _startLink(name) {
      if (this.state === 'closed') return;
      this.transport = name;
      this._parser = new FrameParser();
      this._padding = DEFAULT_PADDING;
      const link = (this._link = new LINKS[name](this, name));
      if (this.options.connectTimeout > 0) {
        this._setTimer('connect', () => {
          // On a reconnect (we have a tracking id) a server may skip the
          // handshake (the Java server never resends it, §2.7): a transport
          // that is up is then open. Otherwise it failed to open.
          if (link.up && this.uuid !== '0') this._linkOpened(link);
          else link.failed('no handshake within ' + this.options.connectTimeout + ' ms');
        }, this.options.connectTimeout);
      }
      try {
        link.start();
      } catch (err) { // e.g. a URL the browser refuses
        link.failed(describe(err));
      }
    }

    /** A link opened: the handshake arrived (or the server sent its first data). */
    _linkOpened(link) {
      if (link !== this._link || link.open) return;
      link.open = true;
      this._everOpened = true;
      this._attempt = 0; // the backoff starts over after a success
      this.state = 'open';
      this.transport = link.name;
      this._clearTimer('connect');
      this._touch();
      this._startHeartbeat(link);
      this._emit('open', link.name);
      // Messages sent while connecting go out now, in order.
      const waiting = this._outbox;
      this._outbox = [];
      for (const text of waiting) {
        if (this._link !== link) {
          this._outbox.push(text);
        } else {
          this._write(text);
        }
      }
    }

    /** A link ended, before or after it opened. */
    _lost(link, reason) {
      if (link !== this._link) return;
      this._link = null;
      this._clearTimers();
      if (this.state === 'closed') return;
      if (link.open) {
        // It dropped: reconnect over the same transport with the same tracking id.
        if (this.options.reconnect) this.state = 'reconnecting';
        else this._closed();
        this._emit('close', reason);
        this._scheduleReconnect(link.name);
      } else if (!this._everOpened) {
        // Negotiation: fall back to the next transport (§7.3).
        this._emit('transportFailure', reason, link.name);
        this._tryNextTransport();
      } else {
        // A reconnect attempt failed: try again, later.
        this._scheduleReconnect(link.name);
      }
    }

    /**
     * Reconnect after an exponential backoff: interval * 2^attempt, capped,
     * with jitter so that many clients do not all come back at once (§7.3).
     */
    _scheduleReconnect(name) {
      const o = this.options;
      if (this.state === 'closed') return;
      if (!o.reconnect || this._attempt >= o.maxReconnectAttempts) {
        this._closed();
        if (o.reconnect) {
          this._emit('error', new Error('gave up reconnecting after ' + this._attempt + ' attempts'));
        }
        return;
      }
      const attempt = this._attempt++;
      const delay = Math.round(Math.min(o.maxReconnectInterval,
        o.reconnectInterval * Math.pow(2, attempt)) * (0.5 + Math.random() * 0.5));
      if (this._everOpened) this.state = 'reconnecting';
      this._emit('reconnect', { attempt: attempt + 1, delay: delay, transport: name });
      this._setTimer('reconnect', () => {
        if (this.state === 'closed') return;
        if (this._everOpened) this._startLink(name); // keep the tracking id (§2.6)
        else this._tryNextTransport();               // a new negotiation round
      }, delay);
    }

    // -- receiving (§2.4, §3.2, §5.1) -----------------------------------------------

    _received(link, text) {
      if (link !== this._link) return;
      this._touch();
      let messages;
      try {
        messages = this._parser.push(text);
      } catch (err) {
        this._emit('error', err);
        link.failed(describe(err)); // out of step: start afresh
        return;
      }
      for (const message of messages) {
        if (link !== this._link) return; // a listener closed us
        const handshake = HANDSHAKE.exec(message);
        if (handshake) {
          // The handshake (§2.4). It comes first, and again after a reconnect
          // (§2.7); a long-polling server may also answer a later poll with
          // it, e.g. with a fresh uuid after forgetting ours. Whenever it
          // comes, it (re)sets the tracking id, heartbeat and padding.
          this.uuid = handshake[1];
          this._heartbeatMs = parseInt(handshake[2], 10);
          this._padding = handshake[3];
          if (!link.open) this._linkOpened(link);
          continue;
        }
        // Not a handshake first: the server skipped it (e.g. it kept our
        // tracking id on a reconnect). We are connected all the same (§2.4).
        if (!link.open) this._linkOpened(link);
        if (message === this._padding) continue; // a heartbeat (§5.1)
        this._emit('message', message);
      }
    }

    // -- sending (§4.1, §4.6) ----------------------------------------------------------

    _write(text) {
      try {
        this._link.write(text);
      } catch (err) {
        this._emit('error', err);
      }
    }

    /** POST `text` to the connection URL; POSTs go one after another, in order. */
    _post(link, text) {
      const url = this._buildUrl(link.name);
      this._posts = this._posts
        .then(() => fetch(url, this._fetchOptions('POST', null, text)))
        .then(response => {
          if (!response.ok) throw new Error('POST failed: HTTP ' + response.status);
        })
        .catch(err => this._emit('error', err));
    }

    /** Tell the server that this tracking id is gone (§4.7, legacy clients). */
    _sendCloseRequest() {
      const url = this._withQuery('X-Atmosphere-Transport=close&X-Atmosphere-tracking-id=' +
        encodeURIComponent(this.uuid));
      try {
        if (global.navigator && navigator.sendBeacon && navigator.sendBeacon(url, '')) return;
        fetch(url, { method: 'POST', keepalive: true, credentials: 'same-origin' }).catch(() => {});
      } catch (err) {
        // best effort: the server finds out anyway, later
      }
    }

    // -- heartbeats and timers (§5) ------------------------------------------------------

    /** Send the padding every heartbeatMs, if the handshake asked for it (§5.2). */
    _startHeartbeat(link) {
      if (!(this._heartbeatMs > 0)) return;
      const beat = () => {
        if (link !== this._link || this.state !== 'open') return;
        this._write(this._padding);
        this._setTimer('heartbeat', beat, this._heartbeatMs);
      };
      this._setTimer('heartbeat', beat, this._heartbeatMs);
    }

    /** Something arrived: restart the inactivity watchdog. */
    _touch() {
      const timeout = this.options.inactivityTimeout;
      const link = this._link;
      if (timeout > 0 && link && link.open) {
        this._setTimer('inactivity', () => link.failed('nothing received for ' + timeout + ' ms'), timeout);
      }
    }

    _setTimer(name, fn, ms) {
      this._clearTimer(name);
      this._timers[name] = setTimeout(() => {
        delete this._timers[name];
        fn();
      }, ms);
    }

    _clearTimer(name) {
      if (this._timers[name] !== undefined) {
        clearTimeout(this._timers[name]);
        delete this._timers[name];
      }
    }

    _clearTimers() {
      for (const name of Object.keys(this._timers)) this._clearTimer(name);
    }

    /** Call the listeners of `name`; one that throws does not stop the others. */
    _emit(name, ...args) {
      for (const fn of (this._listeners[name] || []).slice()) {
        try {
          fn.apply(this, args);
        } catch (err) {
          console.error('AtmosphereClient: a "' + name + '" listener failed', err);
        }
      }
    }
  }

  AtmosphereClient.VERSION = FRAMEWORK_VERSION;
  AtmosphereClient.TRANSPORTS = TRANSPORTS.slice();
  AtmosphereClient.FrameParser = FrameParser; // exposed for tests

  global.AtmosphereClient = AtmosphereClient;
})(typeof window !== 'undefined' ? window : globalThis);
