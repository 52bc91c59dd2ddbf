"""``tinylm serve``: the playground's API answers, refuses bad requests with a 400 and
keeps serving, takes concurrent requests, and its page works in a real browser."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import ThreadingHTTPServer

import numpy as np
import pytest

from browser import browser, needs_browser, network_requests, screenshot  # noqa: F401
from tinylm import runs as tinylm_runs
from tinylm import serve
from tinylm.cli import main
from tinylm.rng import RNG
from tinylm.sample import mark_known, next_probabilities, sample_items

NEURAL = ["--model", "mlp", "--context", "3", "--n-embd", "4", "--n-hidden", "16", "--steps", "60",
          "--eval-every", "30", "--eval-train-batches", "5", "--batch-size", "32", "-n", "0"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, few_names):
    root = tmp_path_factory.mktemp("serve")
    words = few_names
    out = {"mlp": root / "mlp", "ngram": root / "ngram", "transformer": root / "transformer"}
    assert main(["train", "-i", str(words), "-o", str(out["mlp"]), *NEURAL]) == 0
    assert main(["train", "-i", str(words), "-o", str(out["ngram"]), "--order", "3"]) == 0
    # a model that reads through a cache of its own per request, the requests in turns
    assert main(["train", "-i", str(words), "-o", str(out["transformer"]), "--model",
                 "transformer", "--n-embd", "8", "--n-heads", "2", "--n-layers", "1", "--steps",
                 "20", "--eval-every", "20", "--eval-train-batches", "5", "--batch-size", "16",
                 "-n", "0"]) == 0
    return out


@pytest.fixture(params=["mlp", "ngram"])
def server(request, trained):
    """A playground of a trained run on a free port of 127.0.0.1, in a thread."""
    run = tinylm_runs.open_run(trained[request.param])
    with running(serve.Playground(run)) as httpd:
        httpd.run = run
        yield httpd


@contextlib.contextmanager
def running(playground):
    """The server of ``playground`` on a free port of 127.0.0.1, in a thread, while in the block."""
    httpd = serve.make_server(playground, "127.0.0.1", 0)
    # a short poll: shutdown() waits for it, and the default of 0.5 s is paid at every test
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02},
                     daemon=True).start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()


def call(server, path: str, body=None, raw: bytes | None = None, headers=None):
    """(status, JSON) of a request; ``raw`` sends those bytes as the body."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(server.url + path, data=data, headers=headers or {},
                                 method="GET" if data is None else "POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_the_api_answers_what_the_library_computes(server):
    status, info = call(server, "/api/info")
    assert status == 200 and info["vocab"][0] == "\n"
    status, probs = call(server, "/api/probs", {"prompt": "a", "temperature": 0.8, "top_k": 5})
    assert status == 200
    p = np.array([t["p"] for t in probs["tokens"]])
    assert abs(p.sum() - 1) < 1e-12
    full = next_probabilities(server.run.model, server.run.tokenizer, "a", 0.8)
    assert (p > 0).sum() >= 5 and np.all((p > 0) == (full >= np.sort(full)[-5]))  # ties kept
    run = server.run
    assert np.allclose(p, next_probabilities(run.model, run.tokenizer, "a", 0.8, 5), atol=0)
    status, out = call(server, "/api/sample", {"prompt": "a", "n": 6, "seed": 9})
    assert status == 200
    expected = mark_known(sample_items(run.model, run.tokenizer, 6, RNG(9), prompt="a",
                                       continuous=run.loader == "stream"), run.lines3[0])
    assert [(s["text"], not s["new"]) for s in out["samples"]] == expected
    assert all(s["text"].startswith("a") for s in out["samples"])


@pytest.mark.parametrize("body, message", [
    ({"prompt": "a\u00e9"}, "is not in this model's vocabulary"),
    ({"prompt": "a\n"}, "is not in this model's vocabulary"),
    ({"prompt": "x" * 500}, "at most 100"),
    ({"prompt": 3}, "prompt must be text"),
    ({"temperature": 1e9}, "temperature must be a number from"),
    ({"temperature": "hot"}, "temperature must be a number from"),
    ({"temperature": 0}, "temperature must be a number from"),
    ({"top_k": 0}, "top_k must be a whole number"),
    ({"top_k": 1.5}, "top_k must be a whole number"),
    ({"n": 10**9}, "n must be a whole number from 1 to 50"),
    ({"seed": -1}, "seed must be a whole number"),
    ({"colour": "red"}, "unknown field 'colour'"),
    ([1, 2], "must be a JSON object"),
])
def test_a_bad_request_is_a_400_with_one_clear_line_and_the_server_goes_on(server, body, message):
    status, out = call(server, "/api/sample", body)
    assert status == 400 and message in out["error"] and "\n" not in out["error"]
    assert call(server, "/api/sample", {"n": 1})[0] == 200


def test_bodies_that_are_not_json_or_too_large_are_refused(server):
    status, out = call(server, "/api/probs", raw=b"{not json")
    assert status == 400 and "not JSON" in out["error"]
    status, out = call(server, "/api/probs", raw=b"\xff\xfe")
    assert status == 400 and "not JSON" in out["error"]
    status, out = call(server, "/api/probs", raw=b"x" * (serve.MAX_BODY + 1))
    assert status == 400 and "at most" in out["error"]
    assert call(server, "/api/nothing", {})[0] == 404
    assert call(server, "/nothing")[0] == 404
    assert call(server, "/api/probs", {})[0] == 200


def test_odd_headers_and_bodies_are_a_400_and_a_stalled_client_is_dropped(trained, monkeypatch):
    monkeypatch.setattr(serve, "CONNECTION_SECONDS", 0.5)
    with running(serve.Playground(tinylm_runs.open_run(trained["mlp"]))) as httpd:
        status, out = call(httpd, "/api/probs", raw=b"[" * 10_000)
        assert status == 400 and "not JSON" in out["error"]
        with socket.create_connection(httpd.server_address[:2], timeout=10) as s:
            s.sendall("POST /api/probs HTTP/1.0\r\nContent-Length: \u00b2\r\n\r\n".encode())
            assert b" 400 " in s.recv(4096).split(b"\r\n")[0]
        with socket.create_connection(httpd.server_address[:2], timeout=10) as s:
            # promises 100 bytes and sends 2: the server gives up on it instead of a thread
            s.sendall(b"POST /api/probs HTTP/1.0\r\nContent-Length: 100\r\n\r\n{}")
            answer = b""
            while chunk := s.recv(4096):  # after the server's timeout, not never
                answer += chunk
            assert b" 400 " in answer.split(b"\r\n")[0] and b"did not arrive" in answer
        assert call(httpd, "/api/probs", {})[0] == 200


def test_a_burst_of_connections_is_answered_not_reset(server):
    with ThreadPoolExecutor(max_workers=64) as pool:
        results = list(pool.map(lambda i: call(server, "/api/probs", {"prompt": "a"})[0], range(64)))
    assert results == [200] * 64


@pytest.mark.parametrize("server", ["mlp", "ngram", "transformer"], indirect=True)
def test_concurrent_requests_get_the_answers_they_would_get_alone(server):
    # their forward passes interleave, one character at a time: nothing of one request's
    # reading (its tape, a sequence model's cache, its RNG) may leak into another's
    bodies = [{"prompt": p, "n": 4, "seed": s} for p in ("", "a", "bo", "em") for s in (1, 2, 3)]
    alone = [call(server, "/api/sample", b) for b in bodies]
    calls = slow_down(server.run.model, 0.0005)  # long enough for the others to ask for turns
    with ThreadPoolExecutor(max_workers=8) as pool:
        together = list(pool.map(lambda b: call(server, "/api/sample", b), bodies * 2))
    assert together == alone * 2
    switches = sum(a != b for (_, a), (_, b) in zip(calls, calls[1:]))
    assert switches > 4 * len(bodies)  # they did interleave, item by item and within items


def test_serve_refuses_a_busy_port_and_a_missing_run_in_one_line(trained, capsys):
    with serve.make_server(serve.Playground(tinylm_runs.open_run(trained["mlp"])), "127.0.0.1",
                           0) as busy:
        port = busy.server_address[1]
        assert main(["serve", str(trained["mlp"]), "--port", str(port)]) == 2
    assert "cannot listen on 127.0.0.1" in capsys.readouterr().err
    assert main(["serve", str(trained["mlp"] / "missing")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1



def test_serve_refuses_a_text_run_in_one_line(tmp_path, capsys):
    doc = tmp_path / "doc.txt"
    doc.write_text("def f(x):\n\treturn x + 1\n\n" * 40, encoding="utf-8")
    run = tmp_path / "run"
    assert main(["train", "-i", str(doc), "-o", str(run), "--format", "text", "--model", "mlp",
                 "--steps", "2", "--eval-every", "1", "-n", "0"]) == 0
    capsys.readouterr()
    assert main(["serve", str(run), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "a text run (--format text) has none" in err and len(err.splitlines()) == 1

@needs_browser
@pytest.mark.parametrize("server", ["mlp"], indirect=True)
def test_the_playground_in_a_browser_samples_and_its_probabilities_sum_to_1(
        server, browser, tmp_path):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server.url + "/")
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: d.find_element(By.ID, "probs").get_attribute("data-ready") == "")
    prompt = browser.find_element(By.ID, "prompt")
    prompt.send_keys("a")
    wait.until(lambda d: d.find_element(By.ID, "probs").get_attribute("data-ready") == "a")
    bars = browser.find_elements(By.CSS_SELECTOR, "#probs .bar")
    p = [float(b.get_attribute("data-p")) for b in bars]
    assert len(p) == len(server.run.tokenizer.itos) and abs(sum(p) - 1) < 1e-9
    expected = next_probabilities(server.run.model, server.run.tokenizer, "a")
    assert np.allclose(p, expected, rtol=0, atol=1e-12)
    browser.find_element(By.ID, "sample").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#samples li"))
    items = browser.find_elements(By.CSS_SELECTOR, "#samples li")
    assert len(items) == 12 and all(li.text.startswith("a") for li in items)
    assert all(li.get_attribute("class") in ("new", "copy") for li in items)
    # a prompt the model cannot spell shows the server's message, and nothing breaks
    prompt.send_keys("%")
    wait.until(lambda d: "not in this model's vocabulary" in d.find_element(By.ID, "error").text)
    prompt.send_keys("\b")
    wait.until(lambda d: d.find_element(By.ID, "error").text == "")
    assert network_requests(browser) == []
    shot = screenshot(browser, tmp_path / "serve.png")
    assert shot.stat().st_size > 10_000


# --- safe to leave running: bounded work, turns, who may ask ----------------------------------

def slow_down(model, seconds: float) -> list[tuple[float, int]]:
    """Make each forward pass of ``model`` take ``seconds`` longer; (time, thread) of its calls."""
    forward, calls = model.forward, []

    def slow_forward(*args, **kwargs):
        calls.append((time.monotonic(), threading.get_ident()))
        time.sleep(seconds)
        return forward(*args, **kwargs)

    model.forward = slow_forward
    return calls


def until(condition, seconds: float = 5.0) -> None:
    """Wait for ``condition()``, at most ``seconds``."""
    end = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.002)


def timed(server, path, body):
    start = time.monotonic()
    status, out = call(server, path, body)
    return status, out, time.monotonic() - start


def test_expensive_requests_take_turns_with_a_cheap_one_and_end_at_their_deadline(
        trained, monkeypatch):
    monkeypatch.setattr(serve, "REQUEST_SECONDS", 1.0)
    run = tinylm_runs.open_run(trained["mlp"])
    calls = slow_down(run.model, 0.005)  # 50 wild items: thousands of passes, 5 s and more each
    with running(serve.Playground(run)) as httpd, ThreadPoolExecutor(max_workers=4) as pool:
        expensive = [pool.submit(timed, httpd, "/api/sample", {"n": 50, "temperature": 10.0,
                                                               "seed": seed})
                     for seed in range(1, 5)]
        until(lambda: len(calls) >= 40)  # all four are sampling
        status, probs, cheap = timed(httpd, "/api/probs", {"prompt": "a"})
        assert status == 200 and abs(sum(t["p"] for t in probs["tokens"]) - 1) < 1e-9
        assert cheap < 0.3  # about one pass of each request ahead of it, not a whole request
        for future in expensive:
            status, out, seconds = future.result()
            assert status == 503 and "took more than 1 s of model work" in out["error"]
            assert seconds < 1.5 and "\n" not in out["error"]
        # they interleaved: none held the model for long, and it is free once they ended
        gaps = [b - a for (a, _), (b, _) in zip(calls, calls[1:])]
        assert max(gaps) < 0.25
        status, _, seconds = timed(httpd, "/api/probs", {})
        assert status == 200 and seconds < 0.3


def test_a_request_for_more_characters_than_allowed_is_a_400_after_that_many(server, monkeypatch):
    monkeypatch.setattr(serve, "MAX_CHARACTERS", 30)
    calls = slow_down(server.run.model, 0)
    status, out = call(server, "/api/sample", {"n": 50, "temperature": 10.0})
    assert status == 400 and "more than 30 characters" in out["error"] and len(calls) == 30
    status, out = call(server, "/api/sample", {"n": 2, "seed": 3})  # the model is free
    assert status == 200 and len(out["samples"]) == 2


def test_a_request_that_gets_no_turn_by_its_deadline_is_a_503_and_leaves_no_claim(
        trained, monkeypatch):
    monkeypatch.setattr(serve, "REQUEST_SECONDS", 0.2)
    playground = serve.Playground(tinylm_runs.open_run(trained["ngram"]))
    with running(playground) as httpd:
        assert playground.turns.acquire(0)  # another request's pass that does not end
        status, out, seconds = timed(httpd, "/api/probs", {})
        assert status == 503 and "busy" in out["error"] and 0.2 <= seconds < 1.0
        assert playground.turns.waiting == 0
        playground.turns.release()
        status, _, seconds = timed(httpd, "/api/probs", {})
        assert status == 200 and seconds < 0.3


def test_turns_go_to_the_longest_waiter_not_to_the_one_that_just_let_go():
    turns = serve.Turns()
    order = []

    def take(name: str) -> None:
        assert turns.acquire(5)
        order.append(name)
        turns.release()

    assert turns.acquire(0)
    waiters = []
    for i in range(4):
        waiters.append(threading.Thread(target=take, args=(f"w{i}",)))
        waiters[-1].start()
        until(lambda: turns.waiting == i + 1)
    turns.release()
    take("again")  # the holder asks at once: it goes behind the four that were waiting
    for t in waiters:
        t.join(5)
    assert order == ["w0", "w1", "w2", "w3", "again"]
    assert turns.acquire(0)
    start = time.monotonic()
    assert not turns.acquire(0.05) and time.monotonic() - start >= 0.05
    assert turns.waiting == 0  # a wait that ran out is not handed the lock later
    turns.release()
    assert turns.acquire(0)


@pytest.mark.parametrize("headers, allowed", [
    ({"Host": "127.0.0.1:{port}"}, True),
    ({"Host": "localhost:{port}"}, True),
    ({"Host": "LocalHost:{port}"}, True),
    ({"Host": "evil.example:{port}"}, False),  # DNS rebinding: the attacker's name, our address
    ({"Host": "127.0.0.1:1"}, False),
    ({"Host": "127.0.0.1"}, False),  # port 80
    ({"Host": "evil@127.0.0.1:{port}"}, False),
    ({"Host": "192.0.2.7:{port}"}, False),  # an address this server is not bound to
    ({"Origin": "http://127.0.0.1:{port}"}, True),  # the page itself
    ({"Origin": "http://evil.example"}, False),  # a cross-site post from a page the user visits
    ({"Origin": "http://evil.example:{port}"}, False),
    ({"Origin": "http://localhost:{port}"}, False),  # another origin than the Host says
    ({"Origin": "https://127.0.0.1:{port}"}, False),
    ({"Origin": "null"}, False),  # a sandboxed frame, a file: page
])
def test_requests_from_elsewhere_are_a_403(server, headers, allowed):
    port = server.server_address[1]
    headers = {k: v.format(port=port) for k, v in headers.items()}
    for path, body in (("/", None), ("/api/info", None), ("/api/probs", {"prompt": "a"}),
                       ("/api/sample", {"n": 1})):
        req = urllib.request.Request(server.url + path, headers=headers,
                                     method="GET" if body is None else "POST",
                                     data=None if body is None else json.dumps(body).encode())
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                status = r.status
        except urllib.error.HTTPError as e:
            status, out = e.code, json.loads(e.read())
            assert len(out["error"].splitlines()) == 1
        assert status == (200 if allowed else 403), (path, headers)


def test_every_interface_takes_any_address_of_the_machine_but_not_another_name_or_origin():
    origins = serve.Origins("0.0.0.0", 8000)
    assert origins.allows_host("192.0.2.7:8000") and origins.allows_host("[2001:db8::1]:8000")
    assert not origins.allows_host("evil.example:8000") and not origins.allows_host("192.0.2.7:80")
    # a page served by another machine of the network has its own address as its origin
    assert origins.allows_origin("http://192.0.2.7:8000", "192.0.2.7:8000")
    assert not origins.allows_origin("http://192.0.2.9:8000", "192.0.2.7:8000")
    mine = serve.Origins("192.0.2.7", 8000)
    assert mine.allows_host("192.0.2.7:8000") and not mine.allows_host("192.0.2.8:8000")


@pytest.mark.parametrize("lengths, status", [
    (["1" + "0" * 5000], 400),  # int() refuses over 4,300 digits: was a 500
    (["9" * 4301], 400),
    (["0" * 5000 + "2"], 200),  # a length of 2, zero-padded
    (["-1"], 400),
    (["1e3"], 400),
    (["0x2"], 400),
    (["+2"], 400),
    (["2", "3"], 400),  # which body is meant?
    ([], 400),
])
def test_every_bad_content_length_is_a_400(server, lengths, status):
    port = server.server_address[1]
    head = "".join(f"Content-Length: {n}\r\n" for n in lengths)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"POST /api/probs HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{head}\r\n{{}}".encode())
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    assert answer.split(b"\r\n")[0].split()[1] == str(status).encode()
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert status == 200 or len(body["error"].splitlines()) == 1


def test_an_empty_host_is_refused_and_one_open_to_the_network_warns(trained, capsys, monkeypatch):
    # a server that starts returns at once (an empty host used to serve every interface)
    monkeypatch.setattr(ThreadingHTTPServer, "serve_forever", lambda self, **kwargs: None)
    assert main(["serve", str(trained["ngram"]), "--host", ""]) == 2
    err = capsys.readouterr().err
    assert "--host is empty" in err and len(err.strip().splitlines()) == 1
    assert main(["serve", str(trained["ngram"]), "--host", "0.0.0.0", "--port", "0"]) == 0
    out = capsys.readouterr()
    assert out.err.startswith("tinylm: warning: --host 0.0.0.0 makes the playground reachable "
                              "from the network") and len(out.err.splitlines()) == 1
    assert "serving" in out.out
    for host in ("127.0.0.1", "localhost"):
        assert main(["serve", str(trained["ngram"]), "--host", host, "--port", "0"]) == 0
        assert capsys.readouterr().err == ""
