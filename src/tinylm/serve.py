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
temperature of 1e9, a body of megabytes, JSON that is not an object) gets
a 400 with a one-line message and changes nothing; the server goes on. The
model's forward pass keeps per-layer state, so requests take turns with it
(a lock) while the server reads and writes many connections at once.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tinylm.data import EOT
from tinylm.errors import TinylmError
from tinylm.rng import RNG
from tinylm.sample import mark_known, next_probabilities, sample_items

MAX_BODY = 16 * 1024
CONNECTION_SECONDS = 10.0
MAX_PROMPT = 100
MAX_ITEMS = 50
TEMPERATURES = (0.05, 10.0)


class BadRequest(Exception):
    """What is wrong with a request, said in one line (a 400)."""


class Playground:
    """The app's logic, apart from HTTP: checks a request's values and answers it."""

    def __init__(self, run: Any) -> None:
        self.run = run
        self.tokenizer = run.tokenizer
        self.known = set(run.lines3[0])
        self.lock = threading.Lock()

    def info(self) -> dict:
        return {"model": self.run.model_config.model if self.run.kind == "neural" else "ngram",
                "kind": self.run.kind, "vocab": list(self.tokenizer.itos)}

    def probs(self, body: Any) -> dict:
        prompt, temperature, top_k = self._common(body, {"prompt", "temperature", "top_k"})
        with self.lock:
            p = next_probabilities(self.run.model, self.tokenizer, prompt, temperature, top_k)
        return {"prompt": prompt, "tokens": [{"char": c, "p": float(x)}
                                             for c, x in zip(self.tokenizer.itos, p)]}

    def sample(self, body: Any) -> dict:
        prompt, temperature, top_k = self._common(
            body, {"prompt", "temperature", "top_k", "n", "seed"})
        n = _whole(body.get("n", 10), "n", 1, MAX_ITEMS)
        seed = _whole(body.get("seed", 42), "seed", 1, 2**63)
        with self.lock:
            items = sample_items(self.run.model, self.tokenizer, n, RNG(seed), prompt=prompt,
                                 temperature=temperature, top_k=top_k,
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
        vocab = set(self.tokenizer.itos) - {EOT}
        for ch in prompt:
            if ch not in vocab:
                raise BadRequest(f"the character {ch!r} is not in this model's vocabulary")
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


def make_server(playground: Playground, host: str = "127.0.0.1", port: int = 8000
                ) -> ThreadingHTTPServer:
    """The HTTP server of ``playground`` (port 0: any free port; see ``server_address``)."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "tinylm"
        timeout = CONNECTION_SECONDS  # a client that stalls loses its connection, not a thread

        def log_message(self, format: str, *args: Any) -> None:  # quiet: the page is the log
            pass

        def do_GET(self) -> None:
            if self.path in ("/", "/index.html"):
                self._send(200, PAGE.encode("utf-8"), "text/html; charset=utf-8")
            elif self.path == "/api/info":
                self._json(200, playground.info())
            else:
                self._json(404, {"error": f"no such page: {self.path}"})

        def do_POST(self) -> None:
            routes = {"/api/probs": playground.probs, "/api/sample": playground.sample}
            if self.path not in routes:
                self._json(404, {"error": f"no such endpoint: {self.path}"})
                return
            try:
                body = self._body()
                answer = (200, routes[self.path](body))
            except (BadRequest, TinylmError) as e:  # the library's refusals are the user's to fix
                answer = (400, {"error": str(e)})
            except Exception as e:  # a bug here: one line to the client, the server goes on
                answer = (500, {"error": f"the server failed: {type(e).__name__}: {e}"[:300]})
            self._json(*answer)

        def _body(self) -> Any:
            length = self.headers.get("Content-Length")
            if length is None or not (length.isascii() and length.isdigit()):
                raise BadRequest("the request needs a Content-Length")
            if int(length) > MAX_BODY:
                self.close_connection = True  # its body is not read
                raise BadRequest(f"the request body is {int(length):,} bytes; at most {MAX_BODY:,}")
            try:
                raw = self.rfile.read(int(length))
            except TimeoutError:  # fewer bytes than promised: the connection ends here
                self.close_connection = True
                raise BadRequest(f"the request body did not arrive within {self.timeout:g} s "
                                 f"(Content-Length {length})") from None
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
                if self.close_connection:
                    self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(data)
            except ConnectionError:  # the client went away before its answer: nothing to do
                self.close_connection = True

    return _Server((host, port), Handler)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # a burst of connections waits rather than being reset


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
