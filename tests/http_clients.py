"""Small Atmosphere clients over HTTP for the tests: long-polling, streaming
and SSE, written from the protocol description, with the same framing
decoder as the browser clients (§3.2)."""
from __future__ import annotations

import queue
import re
import socket
import threading
from urllib.parse import urlencode

import requests

from conftest import TIMEOUT


class Decoder:
    """The clients' length-tracking parser: ``<utf16 length>|<text>``, messages
    split across reads reassembled, heartbeats (``X``) dropped."""

    def __init__(self, track: bool = True, acks: bool = False):
        self.track = track
        self.acks = acks  # its heartbeats are whitespace: an "X" is a message
        self.partial = ""

    def feed(self, text: str) -> list[str]:
        if not self.track:
            return [] if text.strip() in ("", "X") else [text]
        data = self.partial + text
        out = []
        if data.isascii():  # one code unit per character: an index, no copies
            pos, end = 0, len(data)
            while True:
                while pos < end and data[pos] in " \t\r\n":  # an acknowledging client's heartbeat
                    pos += 1
                bar = data.find("|", pos)
                if bar < 0:
                    break
                n, start = int(data[pos:bar]), bar + 1
                if end - start < n:
                    break
                out.append(data[start:start + n])
                pos = start + n
            data = data[pos:]
        while "|" in data:
            data = data.lstrip()
            head, _, rest = data.partition("|")
            n = int(head)
            units = rest.encode("utf-16-le")
            if len(units) < 2 * n:
                break
            out.append(units[: 2 * n].decode("utf-16-le"))
            data = units[2 * n:].decode("utf-16-le")
        self.partial = data.lstrip()
        return [m for m in out if m != "X" or self.acks]


def params(transport: str, tracking_id: str = "0", track: bool = True, protocol: bool = True,
           framework: str = "5.0.7") -> dict:
    query = {"X-Atmosphere-tracking-id": tracking_id, "X-Atmosphere-Framework": framework,
             "X-Atmosphere-Transport": transport}
    if track:
        query["X-Atmosphere-TrackMessageSize"] = "true"
    if protocol:
        query["X-atmo-protocol"] = "true"
    return query


class PollClient:
    """A long-polling client: the first GET gets the handshake, then
    :meth:`poll` returns the messages of one held GET."""

    def __init__(self, base: str, path: str, track: bool = True, framework: str = "5.0.7",
                 acks: bool = False, http: requests.Session | None = None):
        self.http = http or requests.Session()
        self.url = base + path
        self.track = track
        self.framework = framework
        #: Acknowledge what it got (``X-Atmosphere-Offset``), as the bundled client does.
        self.acks = acks
        self.received = 0
        first = self.http.get(self.url, params=self.first_query(), timeout=TIMEOUT)
        first.raise_for_status()
        self.handshake_response = first
        hello = Decoder(track).feed(first.text) if track else [first.text]
        self.uuid = hello[0].split("|")[0]

    def first_query(self) -> dict:
        query = params("long-polling", track=self.track, framework=self.framework)
        return query | ({"X-Atmosphere-Offset": "0"} if self.acks else {})

    def query(self, transport: str = "long-polling") -> dict:
        query = params(transport, self.uuid, self.track, framework=self.framework)
        return query | ({"X-Atmosphere-Offset": str(self.received)} if self.acks else {})

    def poll(self) -> list[str]:
        response = self.http.get(self.url, params=self.query(), timeout=TIMEOUT)
        response.raise_for_status()
        messages = Decoder(self.track, self.acks).feed(response.text)
        self.received += len(messages)
        return messages

    def poll_until(self, count: int) -> list[str]:
        got: list[str] = []
        while len(got) < count:
            got += self.poll()
        return got

    def post(self, text: str, **kwargs) -> requests.Response:
        return self.http.post(self.url, params=self.query(), data=text.encode("utf-8"),
                              timeout=TIMEOUT, **kwargs)

    def close(self) -> requests.Response:
        return self.http.get(self.url, params={"X-Atmosphere-Transport": "close",
                                               "X-Atmosphere-tracking-id": self.uuid},
                             timeout=TIMEOUT)


class StreamClient:
    """A streaming or SSE client reading its response in a thread; messages
    land in :attr:`messages` (a queue) as they arrive."""

    def __init__(self, base: str, path: str, transport: str = "streaming", track: bool = True,
                 tracking_id: str = "0", headers: dict | None = None, framework: str = "5.0.7",
                 http: requests.Session | None = None, extra: dict | None = None,
                 acks: bool = False):
        self.transport = transport
        self.url = base + path
        self.messages: queue.Queue = queue.Queue()
        self.event_ids: list[str] = []
        self.decoder = Decoder(track, acks)
        self.track = track
        self.framework = framework
        #: Keeps the cookies (the resume key) as a browser does: pass it to
        #: the client that resumes this one.
        self.http = http or requests.Session()
        query = params(transport, tracking_id, track, framework=framework) | (extra or {})
        self.response = self.http.get(self.url, params=query, stream=True, timeout=TIMEOUT,
                                      headers=headers or {})
        self.response.raise_for_status()
        self._socket = self.response.raw._connection.sock
        self.uuid = tracking_id if tracking_id != "0" else None
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        if self.uuid is None:
            self.uuid = self.next().split("|")[0]

    def _read(self) -> None:
        try:
            if self.transport == "sse":
                self._read_sse()
            else:
                for chunk in self.response.iter_content(chunk_size=None, decode_unicode=False):
                    for message in self.decoder.feed(chunk.decode("utf-8")):
                        self.messages.put(message)
        except (requests.RequestException, OSError, ValueError):
            pass
        finally:
            self.messages.put(None)  # the end of the stream

    def _read_sse(self) -> None:
        """An EventSource's parser: lines end with CRLF, LF or CR; an empty
        line ends an event; its data lines are joined with LF."""
        buffer, data = "", []
        for chunk in self.response.iter_content(chunk_size=None):
            buffer += chunk.decode("utf-8")
            *lines, buffer = re.split(r"\r\n|\r(?!$)|\n", buffer)
            for line in lines:
                if line == "":
                    if data:
                        for message in self.decoder.feed("\n".join(data)):
                            self.messages.put(message)
                    data = []
                elif line.startswith("data:"):
                    data.append(line[5:])
                elif line.startswith("id:"):
                    self.event_ids.append(line[3:])

    def next(self) -> str | None:
        return self.messages.get(timeout=TIMEOUT)

    def take(self, count: int) -> list[str]:
        return [self.next() for _ in range(count)]

    def post(self, text: str) -> requests.Response:
        return self.http.post(self.url, params=params(self.transport, self.uuid, self.track,
                                                      framework=self.framework),
                              data=text.encode("utf-8"), timeout=TIMEOUT)

    def close(self) -> None:
        """Drop the connection, as a browser closing the page would (the
        reading thread is woken by the shutdown)."""
        try:
            self._socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._thread.join(TIMEOUT)
        self.response.close()


def query_string(**kwargs) -> str:
    return urlencode(kwargs)
