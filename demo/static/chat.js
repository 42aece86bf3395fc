// The demo chat: enter a name, join, chat. Messages are JSON objects
// {author, message}; the server stamps them with "time" and sends them to
// everyone but the sender, so the sender shows its own lines itself.
// `?transport=long-polling` (or websocket, sse, streaming) in the page URL
// forces that transport.
(function () {
  'use strict';

  const $ = id => document.getElementById(id);
  const chatUrl = document.querySelector('main').dataset.chatUrl;
  const forced = new URLSearchParams(location.search).get('transport');

  let client = null;
  let name = '';

  // -- showing things -------------------------------------------------------

  /** Append a line "author: message"; all data goes in as text, never as HTML. */
  function addLine(author, message, time, kind) {
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
    li.append(when, who, ': ', text);
    const list = $('messages');
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    list.append(li);
    if (atBottom || kind === 'mine') list.scrollTop = list.scrollHeight;
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
      const system = author === 'system' || author === 'Someone';
      addLine(author, String(data.message), data.time, system ? 'system' : 'theirs');
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
    $('message').focus();

    const options = {};
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
    client.send({ author: name, message: message });
    addLine(name, message, Date.now(), 'mine'); // the server does not echo it
    input.value = '';
    input.focus();
  }

  function leave() {
    if (client) client.close();
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
