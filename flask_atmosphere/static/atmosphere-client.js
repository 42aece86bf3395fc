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
 *     chat.on('unsent', (data, reason) => console.log('not sent:', data, reason));
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
 *      handshake asks for them) are the padding, so possibly empty. While the
 *      client is not connected (connecting, or reconnecting after a drop),
 *      messages wait in a queue of at most `maxQueued` and go out once, in
 *      order, when a link opens; `sent` says when one went out, `unsent` when
 *      one never will (the queue was full, the client closed, a POST failed).
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

  /**
   * The transports whose failure hides the HTTP status from the page: when
   * one of them fails before it opens, a probe asks the server why.
   */
  const PROBED = { websocket: true, sse: true };

  /** The transports, in the default order of negotiation (§7). */
  const TRANSPORTS = ['websocket', 'sse', 'streaming', 'long-polling'];

  /**
   * A handshake after length framing is removed: `<uuid>|<heartbeatMs>|<padding>|`
   * (§2.2). The uuid follows the server's rule for tracking ids (§2.6). Being
   * strict here means an application message is never mistaken for a
   * handshake, a hazard of the official 5.x client after reconnects (§2.7).
   */
  const HANDSHAKE = /^([A-Za-z0-9_-]{1,128})\|(\d+)\|([^|]*)\|$/;

  /** ms the probe of a failed WebSocket or SSE may take when connectTimeout is 0. */
  const PROBE_TIMEOUT = 10000;

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
    inactivityTimeout: 0,     // ms without any data (heartbeats, whitespace
                              // included, count) before the connection is
                              // considered dead; 0: never
    withCredentials: false,   // send cookies cross-origin (fetch, EventSource)
    closeOnUnload: true,      // close the connection when the page goes away
    maxQueued: 100,           // messages send() keeps while not connected; one
                              // more is not sent ('unsent'); 0: none wait
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
   * Whitespace between frames (padding, or a heartbeat of a server that
   * receives acknowledgements) is skipped: a piece that is only whitespace
   * completes no message.
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
  // opens it, write(text) sends a message upstream, stop(goodbye) ends it
  // (goodbye: the client leaves, rather than coming back on a new link). A link
  // reports what it receives with received(text) and its end with failed(reason);
  // after either stop() or failed() it is dead and reports nothing more.
  // write(text) returns true (written), false (not taken: the link is going
  // away, the client keeps the message for the next one), or a Promise of
  // true (the server took it) or of the Error that kept it from the server.
  // ---------------------------------------------------------------------------

  class Link {
    constructor(client, name) {
      this.client = client;
      this.name = name;
      this.open = false; // set by the client once the handshake arrived
      this.up = false;   // the transport itself is connected (socket open, headers in)
      this.dead = false;
      // The next message may be a handshake: the first of the link (of each
      // answered poll, for long-polling) (§2.3, §2.7). Later ones never are,
      // so that an application message is not taken for one.
      this.fresh = true;
    }

    /** The connection URL, with the current tracking id (§1.1). */
    url() {
      return this.client._buildUrl(this.name);
    }

    received(text) {
      if (!this.dead) this.client._received(this, text);
    }

    /**
     * The link ended. `refusal`, when the server answered with an error
     * status: {status, reason, retryAfter (ms)}.
     */
    failed(reason, refusal) {
      if (this.dead) return;
      this.stop();
      this.client._lost(this, reason, refusal || null);
    }

    /** Send upstream as a POST to the connection URL, in order (§4.6). */
    write(text) {
      return this.client._post(this, text);
    }

    /** End the link; `goodbye`: the client leaves (see WebSocketLink.stop). */
    stop(goodbye) {
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

    /**
     * A socket that is closing (the network or the server ended it, and its
     * 'close' event is on its way) would drop the message without a word:
     * leave it to the next link.
     */
    write(text) {
      if (this.ws.readyState !== WebSocket.OPEN) return false;
      this.ws.send(text);
      return true;
    }

    /**
     * A close frame says goodbye: the server forgets the client at once. So
     * it is sent only when the client leaves (`goodbye`). A socket the client
     * gives up on to come back (nothing received for too long, a garbled
     * stream) is left open, its handlers gone: the server closes it once the
     * next link takes the client over (or the client closes it if it leaves
     * first). A socket still connecting is dropped without a close frame.
     */
    stop(goodbye) {
      super.stop();
      const ws = this.ws;
      if (!ws) return;
      ws.onopen = ws.onmessage = ws.onclose = null;
      if (ws.readyState === WebSocket.CONNECTING) {
        ws.close();
      } else if (ws.readyState === WebSocket.OPEN) {
        if (goodbye) ws.close(1000);
        else this.client._keepUntilReplaced(ws);
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
      this._run().catch(err => this.failed(describe(err), refusalOf(err)));
    }

    async _run() {
      const response = await fetch(this.url(), this.client._fetchOptions('GET', this.abort));
      if (!response.ok) throw await httpError(response);
      if (!response.body) throw new Error('a streaming response without a body');
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
      this._run().catch(err => this.failed(describe(err), refusalOf(err)));
    }

    async _run() {
      while (!this.dead) {
        // url() each time: the tracking id changes after the handshake (§2.6),
        // the count of messages received with every answer.
        const response = await fetch(this.url(), this.client._fetchOptions('GET', this.abort));
        if (!response.ok) throw await httpError(response);
        this.up = true;
        // With a tracking id, the server does not answer with a handshake but
        // holds the poll until it has something to say, which may take long.
        // Like the 5.x client, count the link as open once the headers are in
        // (servers flush them at once, §4.2).
        if (!this.open && this.client.uuid !== '0') this.client._linkOpened(this);
        const body = await response.text();
        if (this.dead) return;
        // The answer may be the handshake, as a whole (§2.3). An empty body (a
        // poll taken over) or whitespace (a heartbeat) holds no message, but
        // shows that the connection is alive: poll again.
        this.fresh = true;
        this.received(body);
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

  /**
   * Retry-After (RFC 9110 §10.2.3), seconds or an HTTP date, in ms; 0 when
   * absent or unreadable.
   */
  function retryAfterMs(value) {
    if (!value) return 0;
    const text = value.trim();
    if (/^\d+$/.test(text)) return parseInt(text, 10) * 1000;
    const when = Date.parse(text);
    return isNaN(when) ? 0 : Math.max(0, when - Date.now());
  }

  /**
   * What an error response says: {status, reason, retryAfter}. The reason is
   * X-Atmosphere-error (§8.1), else the first line of the body. The body is
   * read in full, so that the request ends as a complete one.
   */
  async function refusalFrom(response) {
    let body = '';
    try {
      body = await response.text();
    } catch (err) {
      // the body is lost; the status says enough
    }
    const reason = response.headers.get('X-Atmosphere-error') ||
      body.trim().split('\n')[0].trim() || response.statusText || '';
    return {
      status: response.status,
      reason: reason,
      retryAfter: retryAfterMs(response.headers.get('Retry-After')),
    };
  }

  /** An Error for an error response, carrying its refusal (see refusalFrom). */
  async function httpError(response) {
    const refusal = await refusalFrom(response);
    const err = new Error('HTTP ' + refusal.status + (refusal.reason ? ' ' + refusal.reason : ''));
    err.refusal = refusal;
    return err;
  }

  function refusalOf(err) {
    return (err && err.refusal) || null;
  }

  /**
   * What an error status means for the client (§8):
   *   'refused'      4xx but 408 and 429: stop for good
   *   'later'        429, 503: try again later, after Retry-After
   *   'unsupported'  501: the transport is not available: fall back
   *   'other'        anything else: reconnect as usual
   */
  function verdict(status) {
    if (status === 501) return 'unsupported';
    if (status === 429 || status === 503) return 'later';
    if (status >= 400 && status < 500 && status !== 408) return 'refused';
    return 'other';
  }

  // ---------------------------------------------------------------------------
  // The client
  // ---------------------------------------------------------------------------

  /**
   * A connection to one Atmosphere route that survives drops.
   *
   * Options (see DEFAULTS): transport, transports, contentType, headers,
   * heartbeatServer, reconnect, reconnectInterval, maxReconnectInterval,
   * maxReconnectAttempts, connectTimeout, inactivityTimeout, withCredentials,
   * closeOnUnload, maxQueued, and a listener per event: onOpen, onMessage,
   * onClose, onError, onReconnect, onTransportFailure, onRefused, onSent, onUnsent.
   *
   * Properties (read-only):
   *   transport  the transport in use or being tried ('websocket', 'sse',
   *              'streaming', 'long-polling'), or null before connect()
   *   state      'idle', 'connecting', 'open', 'reconnecting' or 'closed'
   *   uuid       the tracking id the server gave in the handshake ('0' before)
   *   offset     how many messages arrived from that tracking id; every
   *              request says it (X-Atmosphere-Offset)
   *   queued     how many messages wait to be sent (see send())
   *
   * Events (subscribe with on(name, fn), or pass onOpen, onMessage, ... in the options):
   *   open(transport)          connected (again), the handshake received
   *   message(text)            a message from the server (heartbeats are dropped)
   *   close(reason)            an open connection ended (a reconnect may follow)
   *   error(err)               something failed: an upstream POST (err.status:
   *                            its HTTP status), a garbled stream, no transport
   *                            could connect, gave up reconnecting, or the server
   *                            refused the client (err.status, err.reason, and
   *                            'refused' follows)
   *   refused({status, reason, transport})  the server refused the client for
   *                            good (401, 403, 410 when the app closed it, ...; a
   *                            501 when no transport is left): the client is
   *                            'closed' and makes no more requests
   *   reconnect({attempt, delay, transport, status, reason})  a reconnect is
   *                            scheduled; status and reason when the server
   *                            said to try later (429, 503; delay honours Retry-After)
   *   transportFailure(reason, transport)     a transport failed before it
   *                            opened, or the server does not offer it (501);
   *                            the next one in order is tried
   *   sent(data)               a message given to send() (`data` as given) went
   *                            out: written to the WebSocket, or its POST answered
   *                            with a 2xx
   *   unsent(data, reason)     a message given to send() will never be sent: the
   *                            queue was full (maxQueued), the client closed (close(),
   *                            refused, gave up) while it waited, or its POST failed
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
      this.offset = 0;          // messages received from this.uuid
      this._listeners = {};
      this._link = null;        // the current link, or null between attempts
      this._order = [];         // the transports of the current negotiation
      this._next = 0;           // index in _order of the transport to try next
      this._everOpened = false; // whether any link opened since connect()
      this._attempt = 0;        // consecutive failed attempts, for the backoff
      this._timers = {};        // connect, reconnect, inactivity, heartbeat
      this._outbox = [];        // messages waiting to be sent: {data, text}, in order
      this._posts = Promise.resolve(); // keeps upstream POSTs in order
      this._padding = DEFAULT_PADDING; // the handshake's heartbeat padding
      this._heartbeatMs = 0;    // the handshake's client heartbeat period
      this._generation = 0;     // bumped by connect() and close(): stale probes are ignored
      this._unloading = false;  // the page is going away: no probes
      this._onPageHide = () => {
        this._unloading = true;
        if (this.options.closeOnUnload) this.close();
      };
      this._onPageShow = () => { this._unloading = false; };
      for (const name of ['open', 'message', 'close', 'error', 'reconnect', 'transportFailure',
        'refused', 'sent', 'unsent']) {
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
        const reason = 'no usable transport among ' + this.options.transports.join(', ');
        this._closed(reason);
        this._emit('error', new Error(reason));
        return this;
      }
      this.state = 'connecting';
      this._generation++;
      this._newSession();
      this._everOpened = false;
      this._attempt = 0;
      this._next = 0;
      this._unloading = false;
      if (global.addEventListener) {
        global.addEventListener('pagehide', this._onPageHide);
        global.addEventListener('pageshow', this._onPageShow);
      }
      this._tryNextTransport();
      return this;
    }

    /**
     * Send a message: a string as it is, anything else as JSON. Over WebSocket
     * it is a text frame, otherwise a POST to the connection URL (§4.1, §4.6).
     * While not connected (connect() not called yet, connecting, reconnecting
     * after a drop), it waits in a queue of at most `maxQueued` messages and
     * goes out once, in order, when a link opens. Returns true if it went out
     * at once, false if it waits (or was not taken: the queue is full, and
     * 'unsent' says so). 'sent' or 'unsent' follows each message, with `data`
     * as given here.
     */
    send(data) {
      const text = typeof data === 'string' ? data : JSON.stringify(data);
      if (this.state === 'closed') throw new Error('AtmosphereClient: send() after close()');
      const entry = { data: data, text: text };
      if (this.state === 'open' && this._link && this._link.open && this._outbox.length === 0) {
        if (this._deliver(entry)) return true;
        return false; // the link is going away: it waits first in the queue
      }
      if (this._outbox.length >= this.options.maxQueued) {
        this._emit('unsent', data, 'the queue is full (' + this.options.maxQueued + ' messages)');
        return false;
      }
      this._outbox.push(entry);
      return false;
    }

    /** How many messages wait to be sent. */
    get queued() {
      return this._outbox.length;
    }

    /** Close the connection for good (call connect() to start again). */
    close() {
      if (this.state === 'closed' || this.state === 'idle') return;
      const wasOpen = this.state === 'open' || this.state === 'reconnecting';
      const link = this._link;
      this._link = null;
      this._closed('closed by the client');
      if (link) {
        link.stop(true);
        // The 5.x client sends no close request; the legacy one does (§4.7). It
        // tells an HTTP server at once that this tracking id is gone, instead
        // of after its grace period. A WebSocket close says it by itself.
        if (link.open && link.name !== 'websocket') this._sendCloseRequest();
      }
      if (wasOpen) this._emit('close', 'closed by the client');
    }

    /**
     * Enter the 'closed' state: no link, no timers, nothing waiting; what
     * waited is 'unsent', for `reason`.
     */
    _closed(reason) {
      this.state = 'closed';
      this._generation++;
      const dropped = this._outbox;
      this._outbox = [];
      this._clearTimers();
      this._closeReplaced();
      if (global.removeEventListener) {
        global.removeEventListener('pagehide', this._onPageHide);
        global.removeEventListener('pageshow', this._onPageShow);
      }
      for (const entry of dropped) this._emit('unsent', entry.data, reason);
    }

    /**
     * Remember the open WebSocket `ws` of a link given up on, to close it if
     * the client leaves before the next link opens (see WebSocketLink.stop).
     */
    _keepUntilReplaced(ws) {
      this._replaced = this._replaced || [];
      this._replaced.push(ws);
    }

    /** Close the sockets kept by _keepUntilReplaced. */
    _closeReplaced() {
      const sockets = this._replaced || [];
      this._replaced = [];
      for (const ws of sockets) {
        try {
          ws.close(1000);
        } catch (err) {
          // closed already
        }
      }
    }

    /** Forget the tracking id: the next handshake starts a new session. */
    _newSession() {
      this.uuid = '0';
      this.offset = 0;
      this._padding = DEFAULT_PADDING;
      this._heartbeatMs = 0;
    }

    // -- building requests (§1) -------------------------------------------------

    /**
     * The connection URL for `transport`: the Atmosphere parameters in the
     * order of the official clients (§1.1), X-Atmosphere-Offset (how many
     * messages arrived from this tracking id: a flask-atmosphere server sends
     * again what it sent after them), then the user's `headers`.
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
      params.push(['X-Atmosphere-Offset', String(this.offset)]);
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
      this._newSession(); // a new transport starts a new session (§7.3)
      this._startLink(this._order[this._next++]);
    }

    _startLink(name) {
      if (this.state === 'closed') return;
      this.transport = name;
      // The padding, like the count, belongs to the session: a reconnect that
      // gets no handshake (a long-poll) keeps the one it had.
      this._parser = new FrameParser();
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
      // The server serves the client here now, and says goodbye to the old
      // sockets itself ("superseded"); closing them from here could overtake
      // that and read as the client's goodbye.
      this._replaced = [];
      this._touch();
      this._startHeartbeat(link);
      this._emit('open', link.name);
      // Messages sent while not connected go out now, in order.
      while (this._outbox.length > 0 && this._link === link && this.state === 'open') {
        if (!this._deliver(this._outbox.shift())) break; // put back: the link is going
      }
    }

    /**
     * A link ended, before or after it opened. `refusal`: what the server's
     * error status said ({status, reason, retryAfter}), when it is known.
     */
    _lost(link, reason, refusal) {
      if (link !== this._link) return;
      this._link = null;
      this._clearTimers();
      if (this.state === 'closed') return;
      if (link.open) {
        // It dropped. Unless the server refuses us, reconnect over the same
        // transport with the same tracking id. A WebSocket the app closed
        // (say 4001) is no different: the reconnect learns whether it may come
        // back (410 if not).
        const refused = refusal !== null && verdict(refusal.status) === 'refused';
        if (this.options.reconnect || refused) this.state = 'reconnecting';
        else this._closed('connection lost: ' + reason);
        this._emit('close', reason);
        if (this.state === 'closed') return; // no reconnect, or a listener closed us
      } else if (refusal === null && PROBED[link.name] && !this._unloading) {
        // A WebSocket or an EventSource that failed does not say why: ask.
        this._probe(link, reason);
        return;
      }
      this._settle(link, reason, refusal, false);
    }

    /**
     * Learn why a WebSocket or SSE link failed before it opened: GET the URL
     * it would use, with X-Atmosphere-Transport=websocket and no upgrade. A
     * flask-atmosphere server runs the same admission, and answers the
     * refusal status if refused, else 501.
     */
    _probe(link, reason) {
      const generation = this._generation;
      const abort = new AbortController();
      const timeout = setTimeout(() => abort.abort(),
        this.options.connectTimeout > 0 ? this.options.connectTimeout : PROBE_TIMEOUT);
      const url = this._buildUrl('websocket');
      Promise.resolve()
        .then(() => fetch(url, this._fetchOptions('GET', abort)))
        .then(response => {
          if (response.ok) { // a server that holds it as a connection: nothing to learn
            abort.abort();
            return null;
          }
          return refusalFrom(response);
        })
        .catch(() => null) // not even that got through: as any failure
        .then(refusal => {
          clearTimeout(timeout);
          if (generation !== this._generation || this.state === 'closed' || this._link) return;
          this._settle(link, reason, refusal, true);
        });
    }

    /**
     * What follows a link's end, once the server's word on it (`refusal`) is
     * known. `probed`: that word comes from a probe, where 501 only means
     * "not refused".
     */
    _settle(link, reason, refusal, probed) {
      switch (refusal === null ? 'other' : verdict(refusal.status)) {
        case 'refused':
          return this._refused(refusal, link.name);
        case 'later':
          return this._scheduleReconnect(link.name, refusal);
        case 'unsupported':
          if (!probed || !this._everOpened) return this._fallBack(link, reason, refusal);
          break; // a reconnect whose probe says "not refused": as any failure
      }
      if (link.open || this._everOpened) {
        // A drop, or a failed reconnect attempt: try again, later.
        this._scheduleReconnect(link.name);
      } else {
        // Negotiation: fall back to the next transport (§7.3).
        this._emit('transportFailure', reason, link.name);
        if (this.state !== 'closed') this._tryNextTransport();
      }
    }

    /**
     * The server does not offer `link`'s transport (501): try the next one
     * at once; if none is left, that is a refusal. After the client opened,
     * the tracking id is kept: the server resumes the client on the other
     * transport.
     */
    _fallBack(link, reason, refusal) {
      const index = this._order.indexOf(link.name);
      if (index < 0 || index + 1 >= this._order.length) {
        return this._refused(refusal, link.name);
      }
      this._emit('transportFailure', reason, link.name);
      if (this.state === 'closed') return;
      this._next = index + 1;
      if (this._everOpened) this._startLink(this._order[this._next++]);
      else this._tryNextTransport();
    }

    /** The server refused the client: stop for good, and say why. */
    _refused(refusal, transport) {
      const status = refusal.status;
      const reason = refusal.reason;
      const err = new Error('refused by the server: HTTP ' + status + (reason ? ' ' + reason : ''));
      this._closed(err.message);
      err.status = status;
      err.reason = reason;
      err.transport = transport;
      this._emit('error', err);
      this._emit('refused', { status: status, reason: reason, transport: transport });
    }

    /**
     * Reconnect after an exponential backoff: interval * 2^attempt, capped,
     * with jitter so that many clients do not all come back at once (§7.3);
     * at least the server's Retry-After when it said to try later (`later`:
     * its refusal). Before any link opened, the negotiation starts again
     * from transport `name`.
     */
    _scheduleReconnect(name, later) {
      const o = this.options;
      if (this.state === 'closed') return;
      if (!o.reconnect || this._attempt >= o.maxReconnectAttempts) {
        const reason = o.reconnect ? 'gave up reconnecting after ' + this._attempt + ' attempts'
          : 'could not connect';
        this._closed(reason);
        if (o.reconnect) this._emit('error', new Error(reason));
        return;
      }
      const attempt = this._attempt++;
      let delay = Math.round(Math.min(o.maxReconnectInterval,
        o.reconnectInterval * Math.pow(2, attempt)) * (0.5 + Math.random() * 0.5));
      if (later) delay = Math.max(delay, later.retryAfter || 0);
      if (this._everOpened) this.state = 'reconnecting';
      else this._next = Math.max(0, this._order.indexOf(name));
      const info = { attempt: attempt + 1, delay: delay, transport: name };
      if (later) {
        info.status = later.status;
        info.reason = later.reason;
      }
      this._emit('reconnect', info);
      if (this.state === 'closed') return; // a listener closed us
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
        if (link.fresh) {
          link.fresh = false;
          // The handshake (§2.4) is the first message of a link, again after
          // a reconnect (§2.7); on long-polling, the whole answer of a poll
          // (§2.3), which a server may also send later, e.g. with a fresh
          // uuid after forgetting ours. Only there is a message taken for one.
          const handshake = (link.name !== 'long-polling' || messages.length === 1) &&
            HANDSHAKE.exec(message);
          if (handshake) {
            this._handshake(handshake);
            if (!link.open) this._linkOpened(link);
            continue;
          }
        }
        // Not a handshake first: the server skipped it (e.g. it kept our
        // tracking id on a reconnect). We are connected all the same (§2.4).
        if (!link.open) this._linkOpened(link);
        // A heartbeat (§5.1), unless the server named no padding: then every
        // framed message is one (its heartbeats are whitespace, see FrameParser).
        if (this._padding !== '' && message === this._padding) continue;
        this.offset++;
        this._emit('message', message);
      }
    }

    /**
     * A handshake: it sets the tracking id, the client heartbeat and the
     * padding. Another uuid than ours is a new session, whose messages are
     * counted from 0; ours again (a reconnect) keeps the count.
     */
    _handshake(match) {
      if (match[1] !== this.uuid) this.offset = 0;
      this.uuid = match[1];
      this._heartbeatMs = parseInt(match[2], 10);
      this._padding = match[3];
    }

    // -- sending (§4.1, §4.6) ----------------------------------------------------------

    /**
     * Write `text` (a message, a heartbeat) on the current link; returns
     * what the link's write() returns, or the Error it threw.
     */
    _write(text) {
      try {
        return this._link.write(text);
      } catch (err) {
        this._emit('error', err);
        return err;
      }
    }

    /**
     * Write a message of send() ({data, text}) on the current, open link, and
     * say 'sent' or 'unsent' once that is known. Returns false when the link
     * did not take it: it is put back first in the queue, for the next link.
     */
    _deliver(entry) {
      const outcome = this._write(entry.text);
      if (outcome === false) {
        this._outbox.unshift(entry);
        return false;
      }
      const settle = result => {
        if (result === true) this._emit('sent', entry.data);
        else this._emit('unsent', entry.data, describe(result));
      };
      if (outcome && typeof outcome.then === 'function') outcome.then(settle);
      else settle(outcome);
      return true;
    }

    /**
     * POST `text` to the connection URL; POSTs go one after another, in order.
     * Each answer is read to its end (a request left unread may show as
     * cancelled); one that is not OK is an 'error' with its status. Returns
     * a Promise of true (a 2xx), or of the Error (also emitted) otherwise.
     */
    _post(link, text) {
      const url = this._buildUrl(link.name);
      this._posts = this._posts
        .then(() => fetch(url, this._fetchOptions('POST', null, text)))
        .then(async response => {
          if (response.ok) {
            await response.text();
            return true;
          }
          const refusal = await refusalFrom(response);
          const err = new Error('POST failed: HTTP ' + refusal.status +
            (refusal.reason ? ' ' + refusal.reason : ''));
          err.status = refusal.status;
          err.reason = refusal.reason;
          throw err;
        })
        .catch(err => {
          this._emit('error', err);
          return err;
        });
      return this._posts;
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

    /**
     * Send the padding every heartbeatMs, if the handshake asked for it
     * (§5.2): an empty message (an empty frame, an empty POST) when the
     * padding is empty.
     */
    _startHeartbeat(link) {
      if (!(this._heartbeatMs > 0)) return;
      const beat = () => {
        if (link !== this._link || this.state !== 'open') return;
        this._write(this._padding);
        this._setTimer('heartbeat', beat, this._heartbeatMs);
      };
      this._setTimer('heartbeat', beat, this._heartbeatMs);
    }

    /** Something arrived (a heartbeat too): restart the inactivity watchdog. */
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
