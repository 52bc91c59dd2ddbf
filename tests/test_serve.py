"""``tinylm serve``: the playground's API answers, refuses bad requests with a 400 and
keeps serving, takes concurrent requests, and its page works in a real browser."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

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
    out = {"mlp": root / "mlp", "ngram": root / "ngram"}
    assert main(["train", "-i", str(words), "-o", str(out["mlp"]), *NEURAL]) == 0
    assert main(["train", "-i", str(words), "-o", str(out["ngram"]), "--order", "3"]) == 0
    return out


@pytest.fixture(params=["mlp", "ngram"])
def server(request, trained):
    """A playground of a trained run on a free port of 127.0.0.1, in a thread."""
    run = tinylm_runs.open_run(trained[request.param])
    httpd = serve.make_server(serve.Playground(run), "127.0.0.1", 0)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.run = run
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
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
    import socket

    monkeypatch.setattr(serve, "CONNECTION_SECONDS", 0.5)
    httpd = serve.make_server(serve.Playground(tinylm_runs.open_run(trained["mlp"])), "127.0.0.1", 0)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
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
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_burst_of_connections_is_answered_not_reset(server):
    with ThreadPoolExecutor(max_workers=64) as pool:
        results = list(pool.map(lambda i: call(server, "/api/probs", {"prompt": "a"})[0], range(64)))
    assert results == [200] * 64


def test_concurrent_requests_get_the_answers_they_would_get_alone(server):
    bodies = [{"prompt": p, "n": 4, "seed": s} for p in ("", "a", "bo", "em") for s in (1, 2, 3)]
    alone = [call(server, "/api/sample", b) for b in bodies]
    with ThreadPoolExecutor(max_workers=8) as pool:
        together = list(pool.map(lambda b: call(server, "/api/sample", b), bodies * 2))
    assert together == alone * 2


def test_serve_refuses_a_busy_port_and_a_missing_run_in_one_line(trained, capsys):
    with serve.make_server(serve.Playground(tinylm_runs.open_run(trained["mlp"])), "127.0.0.1",
                           0) as busy:
        port = busy.server_address[1]
        assert main(["serve", str(trained["mlp"]), "--port", str(port)]) == 2
    assert "cannot listen on 127.0.0.1" in capsys.readouterr().err
    assert main(["serve", str(trained["mlp"] / "missing")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


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
