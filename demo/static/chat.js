// The demo chat: enter a name, join, chat. Messages are JSON objects
// {author, message}; the server stamps them with "time" and sends them to
// everyone but the sender, so the sender shows its own lines itself: as
// "sending…" until the client says it went out ('sent': at once when
// connected; while reconnecting the client keeps it and sends it once back),
// as "not sent" if it never will ('unsent'). The name also goes with every
// request (?name=), for the server's joins and leaves: {author: <name>,
// message: "joined the room", event: "joined"} ("left" for a leave).
// `?transport=long-polling` (or websocket, sse, streaming) in the page URL
// forces that transport.
(function () {
  'use strict';

  const $ = id => document.getElementById(id);
  const chatUrl = document.querySelector('main').dataset.chatUrl;
  const forced = new URLSearchParams(location.search).get('transport');

  let client = null;
  let name = '';
  const ownLines = new Map(); // message sent -> its line, until sent or unsent

  // -- showing things -------------------------------------------------------

  /**
   * Append a line "author: message" and return it; all data goes in as
   * text, never as HTML.
   */
  function addLine(author, message, time, kind, separator) {
    const li = document.createElement('li');
    li.className = kind;
    const when = document.createElement('time');
    const date = time ? new Date(Number(time)) : new Date();
    if (!isNaN(date)) {
      when.dateTime = date.toISOString();
      when.textContent = date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
    }
    const who = document.createElement('span');
    who.className = 'author';
    who.textContent = author;
    const text = document.createElement('span');
    text.className = 'text';
    text.textContent = message;
    li.append(when, who, separator === undefined ? ': ' : separator, text);
    const list = $('messages');
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    list.append(li);
    if (atBottom || kind === 'mine') list.scrollTop = list.scrollHeight;
    return li;
  }

  /** Mark one of our own lines 'pending', 'sent' or 'unsent'. */
  function markLine(li, state, title) {
    li.classList.toggle('pending', state === 'pending');
    li.classList.toggle('unsent', state === 'unsent');
    let note = li.querySelector('.state');
    if (state === 'sent') {
      if (note) note.remove();
      li.removeAttribute('title');
      return;
    }
    if (!note) {
      note = document.createElement('span');
      note.className = 'state';
      li.append(note);
    }
    note.textContent = state === 'pending' ? 'sending…' : 'not sent';
    if (title) li.title = title;
  }

  function settled(data, state, reason) {
    const li = ownLines.get(data);
    if (!li) return;
    ownLines.delete(data);
    markLine(li, state, reason);
  }

  function setStatus(state, text) {
    const status = $('status');
    status.dataset.state = state;
    status.textContent = text;
  }

  function onMessage(text) {
    let data;
    try {
      data = JSON.parse(text);
    } catch (err) {
      addLine('server', String(text), null, 'system');
      return;
    }
    if (data && typeof data === 'object' && 'message' in data) {
      const author = String(data.author || 'anonymous');
      if (data.event) { // a join or a leave: "Ada joined the room"
        addLine(author, String(data.message), data.time, 'system', ' ');
        return;
      }
      addLine(author, String(data.message), data.time, author === 'system' ? 'system' : 'theirs');
    } else {
      addLine('server', text, null, 'system');
    }
  }

  // -- joining, chatting, leaving ---------------------------------------------

  function join(event) {
    event.preventDefault();
    name = $('name').value.trim();
    if (!name) return;
    $('join-form').hidden = true;
    $('send-form').hidden = false;
    $('you').textContent = name;
    $('you').title = name; // a long one is cut short on screen
    $('message').focus();

    const options = { headers: { name: name } }; // ?name= on every request
    if (forced) {
      options.transport = forced;
      options.transports = [forced]; // forced means only that one
    }
    client = new AtmosphereClient(chatUrl, options);
    client.on('open', transport => {
      $('transport').textContent = transport;
      setStatus('open', 'connected');
    });
    client.on('message', onMessage);
    client.on('sent', data => settled(data, 'sent'));
    client.on('unsent', (data, reason) => settled(data, 'unsent', 'not sent: ' + reason));
    client.on('close', () => setStatus('reconnecting', 'connection lost'));
    client.on('reconnect', info =>
      setStatus('reconnecting', 'reconnecting (attempt ' + info.attempt + ')…'));
    client.on('transportFailure', (reason, transport) =>
      console.info('transport', transport, 'failed:', reason));
    client.on('error', err => {
      console.warn('atmosphere:', err);
      if (client && client.state === 'closed') setStatus('closed', 'disconnected');
    });
    setStatus('connecting', 'connecting…');
    $('transport').textContent = '…';
    client.connect();
  }

  function send(event) {
    event.preventDefault();
    const input = $('message');
    const message = input.value.trim();
    if (!message || !client || client.state === 'closed') return;
    // The server does not echo it: show it, as sending until the client says.
    const data = { author: name, message: message };
    const li = addLine(name, message, Date.now(), 'mine');
    markLine(li, 'pending');
    ownLines.set(data, li);
    client.send(data); // 'sent' or 'unsent' follows, maybe at once
    input.value = '';
    input.focus();
  }

  function leave() {
    if (client) client.close(); // what still waited is 'unsent'
    client = null;
    setStatus('closed', 'not connected');
    $('transport').textContent = 'none';
    $('send-form').hidden = true;
    $('join-form').hidden = false;
    $('name').focus();
  }

  $('join-form').addEventListener('submit', join);
  $('send-form').addEventListener('submit', send);
  $('leave').addEventListener('click', leave);
})();
