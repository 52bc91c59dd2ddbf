"""A small local web app to play with a trained run: prompt, temperature, top-k, samples.

``tinylm serve RUN_DIR`` opens the run (any kind: n-gram or neural) and
serves one page and a JSON API from the standard library's threading HTTP
server, bound to 127.0.0.1 unless told otherwise:

  GET  /              the page (everything inline, nothing fetched from elsewhere)
  GET  /api/info      the run: model, kind, vocabulary
  POST /api/probs     {"prompt", "temperature", "top_k"} -> the probability of every
                      character coming next at the start of an item after the prompt
  POST /api/sample    {"prompt", "temperature", "top_k", "n", "seed"} -> n items, each
                      marked new or a copy of a training item

A request that cannot be answered (a character the model never saw, a
temperature of 1e9, a body of megabytes, JSON that is not an object, a
Content-Length of 5,000 digits) gets a 400 with a one-line message and
changes nothing; the server goes on.

**Safe to leave running.** The model's forward pass keeps per-layer state,
so it is used by one request at a time, but in *turns of one forward pass*
(one character predicted), handed out first come, first served (``Turns``):
a request that asks for a lot interleaves with the others instead of
holding the model, so a cheap request waits for at most one pass of each
request ahead of it. Each request may have the model predict at most
``MAX_CHARACTERS`` characters (a 400 past that) and must finish its model
work, waiting for its turns included, within ``REQUEST_SECONDS`` (a 503 past
that); either way its turn ends and the others go on.

**Only this machine's pages.** The server answers only requests whose
``Host`` header names the address it serves (127.0.0.1, localhost, or the
``--host`` given, with its port) and whose ``Origin``, if any, is the page
itself: any other is a 403. A web page the user visits cannot post to the
playground (its Origin is foreign), nor reach it through a DNS name of its
own that it points at 127.0.0.1 (DNS rebinding: its Host is that name).
"""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from tinylm.data import EOT
from tinylm.errors import ConfigError, DataError, TinylmError
from tinylm.rng import RNG
from tinylm.sample import mark_known, next_probabilities, sample_items

MAX_BODY = 16 * 1024
CONNECTION_SECONDS = 10.0
MAX_PROMPT = 100
MAX_ITEMS = 50
TEMPERATURES = (0.05, 10.0)
# The model work of one request, waiting for its turns included. Read when a request
# starts, so that tests can lower it.
REQUEST_SECONDS = 5.0
# Characters one request may have the model predict (each a forward pass): n items of
# a name each are a few hundred; 50 items at temperature 10 run to 256 characters each.
MAX_CHARACTERS = 4000
# Addresses that bind every interface: the playground is then reachable by its
# machine's names and addresses, whichever the client used.
EVERY_INTERFACE = ("0.0.0.0", "::")


class BadRequest(Exception):
    """What is wrong with a request, said in one line (a 400)."""


class Busy(Exception):
    """A request whose model work did not finish within ``REQUEST_SECONDS`` (a 503)."""


class Turns:
    """A lock handed to its waiters in the order they asked for it.

    ``threading.Lock`` favours the thread that releases it: a request that
    releases and at once asks again between two forward passes usually wins,
    and the others starve exactly as if it never let go. Here a release hands
    the lock to the longest waiter.
    """

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._held = False
        self._waiting: deque[threading.Event] = deque()

    def acquire(self, timeout: float) -> bool:
        """Take the lock within ``timeout`` seconds; False if it was not handed over by then."""
        with self._mutex:
            if not self._held:
                self._held = True
                return True
            handed = threading.Event()
            self._waiting.append(handed)
        if handed.wait(max(0.0, timeout)):
            return True
        with self._mutex:
            if handed.is_set():  # handed over just as the wait ran out: it is ours to release
                return True
            self._waiting.remove(handed)
            return False

    @property
    def waiting(self) -> int:
        """How many are waiting for the lock."""
        return len(self._waiting)

    def release(self) -> None:
        with self._mutex:
            if self._waiting:
                self._waiting.popleft().set()  # still held: by the next waiter now
            else:
                self._held = False


class _Metered:
    """The model as one request uses it: each forward pass is one turn of the shared model,
    counted against the request's characters and checked against its deadline.

    ``sample_items`` and ``next_probabilities`` run unchanged on it (the very
    answers they give alone), their per-request state (tape, cache, RNG) their own.
    """

    training = False  # the playground put the model in eval mode once; see eval()

    def __init__(self, model: Any, turns: Turns) -> None:
        self._model = model
        self._turns = turns
        self._left = MAX_CHARACTERS
        self._deadline = time.monotonic() + REQUEST_SECONDS

    def __getattr__(self, name: str) -> Any:  # context, per_position, backend: the model's
        return getattr(self._model, name)

    def eval(self) -> "_Metered":
        # not the model's: threads switching the shared model's mode would race
        return self

    def forward(self, *args: Any, **kwargs: Any) -> tuple[np.ndarray, Any]:
        if self._left <= 0:
            raise BadRequest(f"the request asks the model for more than {MAX_CHARACTERS:,} "
                             "characters; ask for fewer items or a lower temperature")
        self._left -= 1
        left = self._deadline - time.monotonic()
        if left <= 0 or not self._turns.acquire(left):
            raise self._overdue()
        try:
            logits, loss = self._model.forward(*args, **kwargs)
            # copied in our turn: the next request's pass may reuse the model's buffers
            return np.array(self._model.to_numpy(logits)), loss
        finally:
            self._turns.release()

    def _overdue(self) -> Busy:
        done = MAX_CHARACTERS - self._left - 1  # passes this request had
        if not done:
            return Busy("the model was busy with other requests until this request's deadline "
                        f"({REQUEST_SECONDS:g} s); try again")
        return Busy(f"the request took more than {REQUEST_SECONDS:g} s of model work ({done:,} "
                    "characters predicted); ask for fewer items or a lower temperature, or try "
                    "again")


class Playground:
    """The app's logic, apart from HTTP: checks a request's values and answers it."""

    def __init__(self, run: Any) -> None:
        if run.lines3 is None:  # its items and their new-or-copied marks have no meaning there
            raise ConfigError("tinylm serve samples items, and a text run (--format text) has "
                              "none: sample passages of it with 'tinylm sample RUN_DIR'")
        self.run = run
        self.tokenizer = run.tokenizer
        self.known = set(run.lines3[0])
        self.turns = Turns()
        run.model.eval()  # once, for every request: the playground never trains

    def info(self) -> dict:
        return {"model": self.run.model_config.model if self.run.kind == "neural" else "ngram",
                "kind": self.run.kind, "vocab": list(self.tokenizer.itos)}

    def probs(self, body: Any) -> dict:
        """The probability of every token next; ``char`` is the token's text (a BPE token
        that holds part of a character shows it as U+FFFD)."""
        prompt, temperature, top_k = self._common(body, {"prompt", "temperature", "top_k"})
        p = next_probabilities(_Metered(self.run.model, self.turns), self.tokenizer, prompt,
                               temperature, top_k)
        return {"prompt": prompt, "tokens": [{"char": c, "p": float(x)}
                                             for c, x in zip(self.tokenizer.itos, p)]}

    def sample(self, body: Any) -> dict:
        prompt, temperature, top_k = self._common(
            body, {"prompt", "temperature", "top_k", "n", "seed"})
        n = _whole(body.get("n", 10), "n", 1, MAX_ITEMS)
        seed = _whole(body.get("seed", 42), "seed", 1, 2**63)
        items = sample_items(_Metered(self.run.model, self.turns), self.tokenizer, n, RNG(seed),
                             prompt=prompt, temperature=temperature, top_k=top_k,
                             continuous=self.run.loader == "stream")
        return {"seed": seed, "samples": [{"text": item, "new": not copied}
                                          for item, copied in mark_known(items, self.known)]}

    def _common(self, body: Any, allowed: set[str]) -> tuple[str, float, int | None]:
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        unknown = sorted(set(body) - allowed)
        if unknown:
            raise BadRequest(f"unknown field {unknown[0]!r}; the fields are "
                             f"{', '.join(sorted(allowed))}")
        prompt = body.get("prompt", "")
        if not isinstance(prompt, str):
            raise BadRequest("prompt must be text")
        if len(prompt) > MAX_PROMPT:
            raise BadRequest(f"the prompt is {len(prompt)} characters; at most {MAX_PROMPT}")
        if EOT in prompt:
            raise BadRequest(f"the character {EOT!r} is not in this model's vocabulary")
        try:
            self.tokenizer.encode(prompt)  # a byte-level BPE spells any character
        except DataError as e:  # "character 'é' is not in the vocabulary"
            raise BadRequest("the " + str(e).replace("the vocabulary", "this model's vocabulary")
                             ) from None
        temperature = body.get("temperature", 1.0)
        lo, hi = TEMPERATURES
        if not _is_number(temperature) or not lo <= temperature <= hi:
            raise BadRequest(f"temperature must be a number from {lo} to {hi}, got {temperature!r}")
        top_k = body.get("top_k")
        if top_k is not None:
            top_k = _whole(top_k, "top_k", 1, self.tokenizer.vocab_size)
        return prompt, float(temperature), top_k


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x and abs(x) != float("inf")


def _whole(x: Any, name: str, lo: int, hi: int) -> int:
    if not isinstance(x, int) or isinstance(x, bool) or not lo <= x <= hi:
        raise BadRequest(f"{name} must be a whole number from {lo} to {hi}, got {x!r}")
    return x


# --- who may ask -----------------------------------------------------------------------------

def is_loopback(host: str) -> bool:
    """Whether listening on ``host`` keeps the playground to this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a name: it may stand for any address
        return False


def check_host(host: str) -> None:
    """``ConfigError`` for an empty host, which binds every interface without saying so:
    every interface is "0.0.0.0", said as such."""
    if not host.strip():
        raise ConfigError("--host is empty, which would listen on every network interface; "
                          "give 127.0.0.1 (this machine only) or, to open it to the network, "
                          "0.0.0.0")


class Origins:
    """The addresses a request may name in its Host and Origin headers: this server's."""

    def __init__(self, host: str, port: int) -> None:
        self.port = port
        self.every_interface = host in EVERY_INTERFACE
        names = {"localhost", "127.0.0.1", "::1", host.strip("[]").lower()}
        if self.every_interface:  # reached by this machine's name (no DNS look-up: it may hang)
            names.add(socket.gethostname().lower())
        self.names = frozenset(names)

    def allows_host(self, value: str) -> bool:
        """Whether a Host header value (``name:port``) names this server."""
        address = _host_port(value)
        if address is None or address[1] != self.port:
            return False
        return address[0] in self.names or (self.every_interface and _is_address(address[0]))

    def allows_origin(self, value: str, host: str | None) -> bool:
        """Whether an Origin header value (``http://name:port``) is the playground's own page:
        this server, by the very name and port the request's Host says (a page on another
        machine of the network has another address, even where any address is served)."""
        scheme, sep, rest = value.strip().partition("://")
        if scheme.lower() != "http" or not sep or not self.allows_host(rest):
            return False
        return host is None or _host_port(rest) == _host_port(host)


def _host_port(value: str) -> tuple[str, int] | None:
    """(name, port) of ``name[:port]`` (port 80 if none), the name lower-cased; None if it
    is not one."""
    if not value or any(c in value for c in "@/?#\\ \t"):  # urlsplit would read
        return None                                       # "evil@127.0.0.1:80" as 127.0.0.1
    try:
        parts = urlsplit("//" + value.strip())
        name, port = parts.hostname, parts.port or 80
    except ValueError:  # a port that is not a number, brackets that do not close
        return None
    return None if name is None else (name, port)


def _is_address(name: str) -> bool:
    # a DNS rebinding attack needs a name of its own: a literal address is never one
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


# --- HTTP -------------------------------------------------------------------------------------

def make_server(playground: Playground, host: str = "127.0.0.1", port: int = 8000
                ) -> ThreadingHTTPServer:
    """The HTTP server of ``playground`` (port 0: any free port; see ``server_address``).

    ``ConfigError`` for an empty host (see ``check_host``)."""
    check_host(host)

    class Handler(BaseHTTPRequestHandler):
        server_version = "tinylm"
        timeout = CONNECTION_SECONDS  # a client that stalls loses its connection, not a thread

        def log_message(self, format: str, *args: Any) -> None:  # quiet: the page is the log
            pass

        def do_GET(self) -> None:
            if self._refused():
                return
            if self.path in ("/", "/index.html"):
                self._send(200, PAGE.encode("utf-8"), "text/html; charset=utf-8")
            elif self.path == "/api/info":
                self._json(200, playground.info())
            else:
                self._json(404, {"error": f"no such page: {self.path}"})

        def do_POST(self) -> None:
            if self._refused():
                return
            routes = {"/api/probs": playground.probs, "/api/sample": playground.sample}
            if self.path not in routes:
                self.close_connection = True  # its body is not read
                self._json(404, {"error": f"no such endpoint: {self.path}"})
                return
            try:
                body = self._body()
                answer = (200, routes[self.path](body))
            except (BadRequest, TinylmError) as e:  # the library's refusals are the user's to fix
                answer = (400, {"error": str(e)})
            except Busy as e:
                answer = (503, {"error": str(e)})
            except Exception as e:  # a bug here: one line to the client, the server goes on
                answer = (500, {"error": f"the server failed: {type(e).__name__}: {e}"[:300]})
            self._json(*answer)

        def _refused(self) -> bool:
            """Answer a request from elsewhere with a 403, and say whether it was one."""
            origins: Origins = self.server.origins  # type: ignore[attr-defined]
            host = self.headers.get_all("Host") or []
            origin = self.headers.get_all("Origin") or []
            # a missing Host is a client that is no browser (HTTP/1.0): browsers always send it
            if len(host) > 1 or (host and not origins.allows_host(host[0])):
                why = "the request's Host is not this playground's address"
            elif len(origin) > 1 or (origin and not origins.allows_origin(
                    origin[0], host[0] if host else None)):
                why = "the request comes from another site's page"
            else:
                return False
            self.close_connection = True  # its body, if any, is not read
            self._json(403, {"error": f"{why}; open http://127.0.0.1:{origins.port}/ "
                             "(or the --host given) instead"})
            return True

        def _body(self) -> Any:
            lengths = self.headers.get_all("Content-Length") or []
            if len(set(lengths)) > 1:  # two bodies' worth of framing: which one is meant?
                self.close_connection = True
                raise BadRequest("the request has more than one Content-Length")
            length = lengths[0].strip() if lengths else ""
            if not (length.isascii() and length.isdigit()):
                self.close_connection = True
                raise BadRequest("the request needs a Content-Length (a whole number of bytes)")
            # int() refuses over 4,300 digits; a length that long is too large anyway
            digits = length.lstrip("0") or "0"
            size = int(digits) if len(digits) <= len(str(MAX_BODY)) else None
            if size is None or size > MAX_BODY:
                self.close_connection = True  # its body is not read
                shown = f"{size:,}" if size is not None else f"a {len(digits):,}-digit number of"
                raise BadRequest(f"the request body is {shown} bytes; at most {MAX_BODY:,}")
            try:
                raw = self.rfile.read(size)
            except TimeoutError:  # fewer bytes than promised: the connection ends here
                self.close_connection = True
                raise BadRequest(f"the request body did not arrive within {self.timeout:g} s "
                                 f"(Content-Length {size})") from None
            try:
                return json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError, RecursionError):
                raise BadRequest("the request body is not JSON") from None

        def _json(self, status: int, obj: Any) -> None:
            self._send(status, json.dumps(obj).encode("utf-8"), "application/json")

        def _send(self, status: int, data: bytes, kind: str) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Cache-Control", "no-store")
                if status == 503:
                    self.send_header("Retry-After", "1")
                if self.close_connection:
                    self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(data)
            except ConnectionError:  # the client went away before its answer: nothing to do
                self.close_connection = True

    server = (_Server6 if ":" in host else _Server)((host, port), Handler)
    server.origins = Origins(host, server.server_address[1])
    return server


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # a burst of connections waits rather than being reset
    origins: Origins


class _Server6(_Server):
    address_family = socket.AF_INET6


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>tinylm playground</title>
<style>
body { font: 15px/1.4 system-ui, sans-serif; margin: 24px; max-width: 980px; color: #222; }
label { display: inline-block; margin: 4px 16px 4px 0; }
input[type=text] { font: 16px monospace; width: 16em; padding: 3px; }
button { font-size: 15px; padding: 4px 14px; }
#probs { display: flex; align-items: flex-end; height: 180px; gap: 2px; border-bottom: 1px solid #999;
         margin: 12px 0 28px; }
.bar { flex: 1; background: #4a7bd0; position: relative; min-height: 1px; }
.bar span { position: absolute; bottom: -20px; left: 0; right: 0; text-align: center; font: 12px monospace; }
#samples { columns: 3; list-style: none; padding: 0; font-family: monospace; }
#samples li.copy { color: #999; } .mark { font: 11px system-ui; color: #2a7; } li.copy .mark { color: #999; }
#error { color: #b00; min-height: 1.4em; }
</style></head><body>
<h1>tinylm playground <small id="model"></small></h1>
<div>
<label>prompt <input type="text" id="prompt" value="" autocomplete="off"></label>
<label>temperature <input type="range" id="temperature" min="0.1" max="3" step="0.05" value="1">
 <output id="temperature-value">1</output></label>
<label>top-k <input type="range" id="topk" min="0" max="27" step="1" value="0">
 <output id="topk-value">all</output></label>
<button id="sample">sample</button>
</div>
<div id="error"></div>
<h2>next character after the prompt</h2>
<div id="probs"></div>
<h2>samples</h2>
<ul id="samples"></ul>
<script>
let seed = 1;
const $ = (id) => document.getElementById(id);
function settings() {
  const k = Number($('topk').value);
  return {prompt: $('prompt').value, temperature: Number($('temperature').value),
          top_k: k > 0 ? k : null};
}
async function post(path, body) {
  const r = await fetch(path, {method: 'POST', headers: {'Content-Type': 'application/json'},
                               body: JSON.stringify(body)});
  const data = await r.json();
  if (!r.ok) { $('error').textContent = data.error; throw new Error(data.error); }
  $('error').textContent = '';
  return data;
}
async function showProbs() {
  const data = await post('/api/probs', settings());
  const box = $('probs');
  box.replaceChildren();
  const top = Math.max(...data.tokens.map(t => t.p));
  for (const t of data.tokens) {
    const bar = document.createElement('div');
    bar.className = 'bar';
    bar.dataset.p = String(t.p);
    bar.dataset.char = t.char;
    bar.style.height = (100 * t.p / top) + '%';
    bar.title = (t.char === '\\n' ? 'end' : t.char) + ': ' + t.p.toFixed(4);
    const label = document.createElement('span');
    label.textContent = t.char === '\\n' ? '⏎' : t.char;
    bar.appendChild(label);
    box.appendChild(bar);
  }
  box.dataset.ready = data.prompt;
}
async function sample() {
  const data = await post('/api/sample', {...settings(), n: 12, seed: seed++});
  const list = $('samples');
  list.replaceChildren();
  for (const s of data.samples) {
    const li = document.createElement('li');
    li.className = s.new ? 'new' : 'copy';
    li.textContent = s.text + ' ';
    const mark = document.createElement('span');
    mark.className = 'mark';
    mark.textContent = s.new ? 'new' : 'copy';
    li.appendChild(mark);
    list.appendChild(li);
  }
  list.dataset.seed = String(data.seed);
}
function update() {
  $('temperature-value').textContent = $('temperature').value;
  $('topk-value').textContent = Number($('topk').value) > 0 ? $('topk').value : 'all';
  showProbs().catch(() => {});
}
for (const id of ['prompt', 'temperature', 'topk']) $(id).addEventListener('input', update);
$('sample').addEventListener('click', () => sample().catch(() => {}));
fetch('/api/info').then(r => r.json()).then(info => {
  $('model').textContent = '(' + info.model + ')';
  $('topk').max = String(info.vocab.length);
  update();
});
</script></body></html>
"""
