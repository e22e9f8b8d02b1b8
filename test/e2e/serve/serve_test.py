#!/usr/bin/env python3
"""Drives `ktrun PLAN --serve` with real clients (curl, http.client, urllib).

    serve_test.py KTRUN PLAN            protocol, errors, 503, disconnects, a small load test
    serve_test.py KTRUN PLAN --load 16  only the load test, 16 clients; prints throughput

Servers listen on 127.0.0.1 with --port 0 (the server picks a free port and
prints it). Everything is bounded in time; a failure raises and exits 1.
"""
import argparse
import concurrent.futures
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

TIMEOUT = 60


CPU_INFER = "1"  # threads per server; --cpu-infer changes it


class Server:
    def __init__(self, ktrun, plan, *flags):
        self.process = subprocess.Popen(
            [ktrun, plan, "--serve", "--port", "0", "--cpu-infer", CPU_INFER, "--no-progress",
             *flags],
            stderr=subprocess.PIPE, text=True)
        deadline = time.time() + TIMEOUT
        while True:
            line = self.process.stderr.readline()
            if not line or time.time() > deadline:
                raise RuntimeError("the server did not start: " + line)
            match = re.search(r"listening on http://([0-9.]+):([0-9]+)", line)
            if match:
                self.port = int(match.group(2))
                break
        # Keep draining stderr so the server never blocks on it.
        threading.Thread(target=self.process.stderr.read, daemon=True).start()

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=TIMEOUT)
        assert code == 0, f"the server exited with {code} on SIGTERM"

    def request(self, method, path, body=None, raw=None):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)
        data = raw if raw is not None else (json.dumps(body) if body is not None else None)
        connection.request(method, path, body=data,
                           headers={"Content-Type": "application/json"} if data else {})
        response = connection.getresponse()
        payload = response.read()
        connection.close()
        return response.status, response.getheader("Content-Type"), payload

    def post(self, path, body=None, raw=None):
        status, kind, payload = self.request("POST", path, body, raw)
        return status, json.loads(payload) if kind == "application/json" else payload

    def get(self, path):
        status, _, payload = self.request("GET", path)
        return status, json.loads(payload)


def parse_sse(payload):
    """The events of a text/event-stream body; checks its framing."""
    text = payload.decode("utf-8")
    assert text.endswith("data: [DONE]\n\n"), text[-200:]
    # Comments (": keep-alive", sent while a request waits) carry no event.
    events = [e for e in text.split("\n\n")[:-1] if e != ": keep-alive"]
    for event in events:
        assert event.startswith("data: ") and "\n" not in event, repr(event)
    assert events[-1] == "data: [DONE]"
    return [json.loads(event[len("data: "):]) for event in events[:-1]]


def stream(server, path, body):
    status, kind, payload = server.request("POST", path, dict(body, stream=True))
    assert status == 200 and kind == "text/event-stream", (status, kind, payload)
    return parse_sse(payload)


def ktrun_json(ktrun, plan, prompt, tokens, *flags):
    out = subprocess.run([ktrun, plan, "--prompt", prompt, "--max-new-tokens", str(tokens),
                          "--json", "--cpu-infer", "1", *flags],
                         check=True, capture_output=True, text=True, timeout=TIMEOUT).stdout
    return json.loads(out)


def expected_finish(reference, tokens):
    return "stop" if reference["stopped_at_eos"] else "length"


def check_usage(usage, prompt_tokens, completion_tokens):
    assert usage == {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                     "total_tokens": prompt_tokens + completion_tokens}, usage


def check_error(server, path, body, status, code, raw=None):
    got, answer = server.post(path, body, raw)
    assert got == status, (body, raw, got, answer)
    error = answer["error"]
    assert set(error) == {"message", "type", "param", "code"}, answer
    assert isinstance(error["message"], str) and error["message"], answer
    assert isinstance(error["type"], str), answer
    assert error["code"] == code, (body, raw, answer)
    return error


def test_protocol(ktrun, plan, server):
    status, health = server.get("/health")
    assert status == 200 and health["status"] == "ok" and health["slots_idle"] == 2, health
    status, models = server.get("/v1/models")
    assert status == 200 and models["object"] == "list", models
    assert [m["id"] for m in models["data"]] == [health["model"]], models
    assert models["data"][0]["object"] == "model"

    # Non-streaming chat == ktrun's one-shot chat (same template, greedy).
    reference = ktrun_json(ktrun, plan, "Hello there", 12)
    chat = {"model": health["model"], "max_tokens": 12, "temperature": 0,
            "messages": [{"role": "user", "content": "Hello there"}]}
    status, answer = server.post("/v1/chat/completions", chat)
    assert status == 200, answer
    assert answer["object"] == "chat.completion" and answer["id"].startswith("chatcmpl-")
    assert answer["model"] == health["model"]
    choice = answer["choices"][0]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant", answer
    assert choice["message"]["content"] == reference["text"], (answer, reference)
    assert "reasoning_content" not in choice["message"]
    assert choice["finish_reason"] == expected_finish(reference, 12), answer
    check_usage(answer["usage"], len(reference["prompt_ids"]), len(reference["generated_ids"]))

    # Streaming: the deltas concatenate to the same text; usage on request.
    events = stream(server, "/v1/chat/completions",
                    dict(chat, stream_options={"include_usage": True}))
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    assert len({e["id"] for e in events}) == 1
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert events[-1]["choices"] == [] and events[-1]["usage"] == answer["usage"], events[-1]
    final = events[-2]["choices"][0]
    assert final["delta"] == {} and final["finish_reason"] == choice["finish_reason"], final
    pieces = [e["choices"][0]["delta"].get("content", "") for e in events[1:-2]]
    assert all(e["choices"][0]["finish_reason"] is None for e in events[:-2])
    assert "".join(pieces) == choice["message"]["content"]

    # Content parts, system messages and a conversation.
    parts = dict(chat, messages=[{"role": "user", "content": [
        {"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}]}])
    assert server.post("/v1/chat/completions", parts)[1]["choices"] == answer["choices"]
    longer = dict(chat, messages=[{"role": "system", "content": "Be brief."},
                                  {"role": "user", "content": "Hi"},
                                  {"role": "assistant", "content": "Hello."},
                                  {"role": "user", "content": "More?"}])
    status, turn = server.post("/v1/chat/completions", longer)
    assert status == 200 and turn["usage"]["prompt_tokens"] > answer["usage"]["prompt_tokens"]

    # Completions == ktrun --no-chat; streamed through curl.
    raw = ktrun_json(ktrun, plan, "abc", 10, "--no-chat")
    status, completion = server.post("/v1/completions", {"prompt": "abc", "max_tokens": 10})
    assert status == 200 and completion["object"] == "text_completion", completion
    assert completion["id"].startswith("cmpl-")
    assert completion["choices"][0]["text"] == raw["text"], (completion, raw)
    check_usage(completion["usage"], len(raw["prompt_ids"]), len(raw["generated_ids"]))
    curl = shutil.which("curl")
    if curl:
        out = subprocess.run([curl, "-sN", f"http://127.0.0.1:{server.port}/v1/completions",
                              "-H", "Content-Type: application/json", "-d",
                              json.dumps({"prompt": "abc", "max_tokens": 10, "stream": True})],
                             check=True, capture_output=True, timeout=TIMEOUT).stdout
        events = parse_sse(out)
        assert "".join(e["choices"][0]["text"] for e in events) == raw["text"]
        assert events[-1]["choices"][0]["finish_reason"] == completion["choices"][0]["finish_reason"]
        out = subprocess.run([curl, "-s", f"http://127.0.0.1:{server.port}/health"],
                             check=True, capture_output=True, timeout=TIMEOUT).stdout
        assert json.loads(out)["status"] == "ok"

    # Seeded sampling is reproducible, streamed or not; the seed matters.
    sampled = {"prompt": "abc", "max_tokens": 16, "temperature": 1.5, "top_k": 50,
               "top_p": 0.95, "seed": 7, "ignore_eos": True}
    first = server.post("/v1/completions", sampled)[1]["choices"][0]["text"]
    assert server.post("/v1/completions", sampled)[1]["choices"][0]["text"] == first
    events = stream(server, "/v1/completions", sampled)
    assert "".join(e["choices"][0]["text"] for e in events) == first
    others = {server.post("/v1/completions", dict(sampled, seed=s))[1]["choices"][0]["text"]
              for s in (8, 9, 10)}
    assert others != {first}, "the seed changed nothing"

    # Stop strings cut the text, streamed or not, and finish with "stop".
    long = server.post("/v1/completions", {"prompt": "abc", "max_tokens": 40,
                                           "ignore_eos": True})[1]["choices"][0]["text"]
    start = next(i for i in range(1, len(long) - 2)
                 if long[i:i + 2].isascii() and long[i:i + 2].isalnum())
    stop = long[start:start + 2]
    cut = long[:long.find(stop)]
    body = {"prompt": "abc", "max_tokens": 40, "ignore_eos": True, "stop": ["\u2603never", stop]}
    status, stopped = server.post("/v1/completions", body)
    assert stopped["choices"][0] == {"index": 0, "text": cut, "finish_reason": "stop",
                                     "logprobs": None}, (stopped, cut, stop)
    assert stopped["usage"]["completion_tokens"] < 40
    events = stream(server, "/v1/completions", dict(body, stop=stop))
    assert "".join(e["choices"][0]["text"] for e in events) == cut
    assert events[-1]["choices"][0]["finish_reason"] == "stop"

    # max_tokens beyond the cache is capped to what fits: finish "length".
    status, capped = server.post("/v1/completions", {"prompt": "abc", "max_tokens": 10**9,
                                                     "ignore_eos": True})
    assert status == 200 and capped["choices"][0]["finish_reason"] == "length", capped
    assert capped["usage"]["total_tokens"] == health["cache_lens"], capped["usage"]


def test_reasoning(ktrun, plan):
    # --force-think opens "<think>\n" in the prompt: everything up to
    # "</think>" is reasoning_content.
    server = Server(ktrun, plan, "--force-think", "--parallel", "1")
    try:
        reference = ktrun_json(ktrun, plan, "Hi", 24, "--force-think")
        text = reference["text"]
        reasoning, content = (text.split("</think>", 1) + [""])[:2]
        content = content.lstrip(" \t\r\n")
        chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 24}
        status, answer = server.post("/v1/chat/completions", chat)
        message = answer["choices"][0]["message"]
        assert status == 200 and message["reasoning_content"] == reasoning, (answer, reference)
        assert message["content"] == content, (answer, reference)
        events = stream(server, "/v1/chat/completions", chat)
        deltas = [e["choices"][0]["delta"] for e in events[1:-1]]
        assert "".join(d.get("reasoning_content", "") for d in deltas) == reasoning
        assert "".join(d.get("content", "") for d in deltas) == content
        # Reasoning deltas come before any content delta.
        kinds = [("r" if "reasoning_content" in d else "c") for d in deltas if d]
        assert "".join(kinds) == "".join(sorted(kinds, reverse=True)), kinds
    finally:
        server.stop()


def test_bad_input(server):
    chat, completion = "/v1/chat/completions", "/v1/completions"
    user = [{"role": "user", "content": "Hi"}]
    check_error(server, chat, None, 400, "invalid_json", raw="{\"messages\": ")
    check_error(server, chat, None, 400, "invalid_json", raw="[1, 2]")
    check_error(server, chat, None, 400, "invalid_utf8",
                raw=b'{"messages": [{"role": "user", "content": "a\xff\xfe"}]}')
    check_error(server, chat, None, 400, "invalid_utf8",
                raw='{"messages": [{"role": "user", "content": "\\ud800"}]}')
    assert check_error(server, chat, {"messages": user, "frobnicate": 1}, 400,
                       "unknown_field")["param"] == "frobnicate"
    check_error(server, chat, {"messages": user, "prompt": "x"}, 400, "unknown_field")
    check_error(server, completion, {"prompt": "x", "messages": user}, 400, "unknown_field")
    check_error(server, chat, {"messages": [{"role": "user", "content": "x", "extra": 1}]}, 400,
                "unknown_field")
    assert check_error(server, chat, {"max_tokens": 3}, 400,
                       "missing_required_parameter")["param"] == "messages"
    check_error(server, completion, {}, 400, "missing_required_parameter")
    for bad in ([], "hi", [{"role": "wizard", "content": "x"}], [{"content": "x"}],
                [{"role": "user", "content": 5}], [{"role": "user"}],
                [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]):
        check_error(server, chat, {"messages": bad}, 400, "invalid_value")
    for field, value in (("max_tokens", -1), ("max_tokens", 0), ("max_tokens", "5"),
                         ("max_tokens", 2.5), ("max_tokens", 2**70), ("temperature", "hot"),
                         ("temperature", 3), ("top_p", 0), ("top_k", -2), ("seed", "x"),
                         ("stop", 5), ("stop", ["a", "b", "c", "d", "e"]), ("stream", "yes"),
                         ("stream_options", 1)):
        error = check_error(server, chat, {"messages": user, field: value}, 400, "invalid_value")
        assert error["param"] == field, error
    check_error(server, completion, {"prompt": 12}, 400, "invalid_value")
    for field, value in (("n", 2), ("logprobs", True), ("tools", [{"type": "function"}])):
        check_error(server, chat, {"messages": user, field: value}, 400, "unsupported_value")
    check_error(server, completion, {"prompt": "x", "echo": True}, 400, "unsupported_value")
    # Documented fields at their defaults, and ignored ones, are accepted.
    status, _ = server.post(chat, {"messages": user, "max_tokens": 1, "n": 1, "logprobs": False,
                                   "user": "u", "presence_penalty": 0.5, "temperature": None})
    assert status == 200
    long = " ".join(["word"] * 6000)
    check_error(server, chat, {"messages": [{"role": "user", "content": long}]}, 400,
                "context_length_exceeded")
    check_error(server, completion, {"prompt": long}, 400, "context_length_exceeded")
    status, answer = server.get("/nowhere")
    assert status == 404 and answer["error"]["code"] == "unknown_url", answer
    status, health = server.get("/health")
    assert status == 200 and health["slots_idle"] == health["slots_total"], health


def wait_for(server, predicate, seconds):
    deadline = time.time() + seconds
    while time.time() < deadline:
        health = server.get("/health")[1]
        if predicate(health):
            return health
        time.sleep(0.01)
    raise AssertionError(f"/health never matched within {seconds} s: {health}")


def test_busy(ktrun, plan):
    # One slot, a queue of one: the third request at once gets 503.
    server = Server(ktrun, plan, "--parallel", "1", "--queue", "1")
    try:
        body = {"prompt": "abc", "max_tokens": 3000, "ignore_eos": True}
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            running = pool.submit(server.post, "/v1/completions", body)
            wait_for(server, lambda h: h["slots_busy"] == 1, 10)
            queued = pool.submit(server.post, "/v1/completions", body)
            wait_for(server, lambda h: h["queued"] == 1, 10)
            error = check_error(server, "/v1/completions", body, 503, "server_busy")
            assert error["type"] == "server_error", error
            for future in (running, queued):
                status, answer = future.result(timeout=TIMEOUT)
                assert status == 200 and answer["usage"]["completion_tokens"] == 3000, answer
        wait_for(server, lambda h: h["slots_idle"] == 1 and h["queued"] == 0, 5)
    finally:
        server.stop()


def send_raw(server, body):
    connection = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
    data = json.dumps(body).encode()
    connection.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
                       b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                       % (len(data), data))
    return connection


def test_disconnect(server):
    # A full long generation, for scale.
    body = {"prompt": "abc", "max_tokens": 6000, "ignore_eos": True, "stream": True}
    start = time.time()
    assert server.post("/v1/completions", dict(body, stream=False))[0] == 200
    full = time.time() - start
    # Two streams take both slots; their clients read one event and leave.
    sockets = []
    start = time.time()
    for _ in range(2):
        connection = send_raw(server, body)
        received = b""
        while b"data: " not in received:
            chunk = connection.recv(4096)
            assert chunk, received
            received += chunk
        sockets.append(connection)
    for connection in sockets:
        connection.close()
    wait_for(server, lambda h: h["slots_idle"] == 2, max(1.0, full / 2))
    freed = time.time() - start
    status, answer = server.post("/v1/completions", {"prompt": "abc", "max_tokens": 4})
    assert status == 200 and answer["usage"]["completion_tokens"] <= 4
    print(f"disconnect: both slots free {freed:.3f} s after the streams began "
          f"(a full generation takes {full:.3f} s)")

    # Whole (non-streaming) answers: two clients take both slots, a third
    # waits in the queue; all three leave before any answer is ready. The
    # server notices through its keep-alive writes and frees everything.
    whole = dict(body, stream=False)
    start = time.time()
    sockets = [send_raw(server, whole) for _ in range(2)]
    wait_for(server, lambda h: h["slots_busy"] == 2, 10)
    sockets.append(send_raw(server, whole))
    wait_for(server, lambda h: h["queued"] == 1, 10)
    for connection in sockets:
        connection.close()
    wait_for(server, lambda h: h["slots_idle"] == 2 and h["queued"] == 0, max(2.0, full / 2))
    freed = time.time() - start
    assert freed < full, (freed, full)
    print(f"disconnect: whole answers and the queued request freed {freed:.3f} s after they "
          f"began (a full generation takes {full:.3f} s)")


def load_test(server, clients, requests_each, max_tokens):
    prompts = [f"Question {i}: what is {i} plus {i}?" for i in range(clients)]
    reference = {}
    for prompt in prompts:
        body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens}
        reference[prompt] = server.post("/v1/chat/completions", body)[1]
    latencies = []

    def client(index):
        prompt = prompts[index]
        want = reference[prompt]
        body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens}
        tokens = 0
        for turn in range(requests_each):
            start = time.time()
            if (index + turn) % 2:
                events = stream(server, "/v1/chat/completions", body)
                text = "".join(e["choices"][0]["delta"].get("content", "") for e in events)
                finish = events[-1]["choices"][0]["finish_reason"]
            else:
                status, answer = server.post("/v1/chat/completions", body)
                assert status == 200, answer
                text = answer["choices"][0]["message"]["content"]
                finish = answer["choices"][0]["finish_reason"]
            latencies.append(time.time() - start)
            assert text == want["choices"][0]["message"]["content"], (prompt, text)
            assert finish == want["choices"][0]["finish_reason"]
            tokens += want["usage"]["completion_tokens"]
        return tokens

    start = time.time()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        tokens = sum(pool.map(client, range(clients)))
    elapsed = time.time() - start
    latencies.sort()
    p50 = latencies[len(latencies) // 2]
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    health = wait_for(server, lambda h: h["slots_idle"] == h["slots_total"] and h["queued"] == 0, 5)
    batching = health["batching"]
    if health["slots_total"] > 1:
        # Continuous batching: with more clients than slots, steps ran
        # several requests together.
        assert batching["largest_batch"] == health["slots_total"], batching
        assert batching["batched_steps"] > 0, batching
    print(f"load: {clients} clients x {requests_each} requests, {len(latencies)} responses "
          f"complete and correct in {elapsed:.2f} s: {len(latencies) / elapsed:.1f} req/s, "
          f"{tokens / elapsed:.0f} generated tok/s; latency p50 {p50 * 1000:.0f} ms, "
          f"p99 {p99 * 1000:.0f} ms; slots idle {health['slots_idle']}/{health['slots_total']}; "
          f"{batching['batched_steps']} of {batching['steps']} steps batched, at most "
          f"{batching['largest_batch']} requests in one")


def test_openai_sdk(ktrun, plan, sdk):
    """The official openai SDK (npm) against the answers of http.client."""
    server = Server(ktrun, plan, "--parallel", "2", "--queue", "4")
    try:
        messages = [{"role": "user", "content": "What is 2 plus 2?"}]
        chat = server.post("/v1/chat/completions", {"messages": messages, "max_tokens": 24})[1]
        completion = server.post("/v1/completions",
                                 {"prompt": "Once upon a time", "max_tokens": 16})[1]
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "openai_sdk_client.mjs")
        result = subprocess.run(["node", script, sdk, f"http://127.0.0.1:{server.port}/v1"],
                                capture_output=True, text=True, timeout=TIMEOUT)
        assert result.returncode == 0, result.stderr
        got = json.loads(result.stdout)
        assert got["models"] == [server.get("/v1/models")[1]["data"][0]["id"]], got["models"]
        want_chat = chat["choices"][0]
        for name in ("chat", "chatStream"):
            answer = got[name]
            text = answer["content"] if name == "chat" else answer["text"]
            assert text == want_chat["message"]["content"], (name, answer, chat)
            assert answer["finish"] == want_chat["finish_reason"], (name, answer)
            assert answer["usage"] == chat["usage"], (name, answer["usage"], chat["usage"])
        want_completion = completion["choices"][0]
        for name in ("completion", "completionStream"):
            answer = got[name]
            assert answer["text"] == want_completion["text"], (name, answer, completion)
            assert answer["finish"] == want_completion["finish_reason"], (name, answer)
        assert got["completion"]["usage"] == completion["usage"], got["completion"]
        assert got["error"] == {"status": 400, "code": "invalid_value", "param": "max_tokens",
                                "type": "invalid_request_error"}, got["error"]
        assert 3 <= got["aborted"]["received"] < 3000, got["aborted"]
        assert got["aborted"]["ended"] in ("aborted", "AbortError", "APIUserAbortError"), got
        assert server.get("/health")[1]["batching"]["tokens"] < 3000  # it did not run on
        wait_for(server, lambda h: h["slots_idle"] == 2 and h["queued"] == 0, 5)
        print(f"openai-sdk: models, chat and completions (whole and streamed, "
              f"{got['chatStream']['chunks']} chat chunks), the error shape and an aborted "
              f"stream all as expected")
    finally:
        server.stop()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("ktrun")
    parser.add_argument("plan")
    parser.add_argument("--load", type=int, default=0, help="only the load test, N clients")
    parser.add_argument("--requests", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--parallel", default="2")
    parser.add_argument("--openai-sdk", help="only the openai SDK test, with the SDK in this dir")
    parser.add_argument("--cpu-infer", default="1", help="threads of each server")
    args = parser.parse_args()
    global CPU_INFER
    CPU_INFER = args.cpu_infer
    ktrun = args.ktrun if os.path.sep in args.ktrun else shutil.which(args.ktrun)
    signal.alarm(600)  # a hung server fails the test instead of hanging it
    if args.openai_sdk:
        test_openai_sdk(ktrun, args.plan, args.openai_sdk)
        return
    if args.load:
        server = Server(ktrun, args.plan, "--parallel", args.parallel, "--queue", str(args.load))
        try:
            load_test(server, args.load, args.requests, args.max_tokens)
        finally:
            server.stop()
        return
    server = Server(ktrun, args.plan, "--parallel", "2", "--queue", "16")
    try:
        test_protocol(ktrun, args.plan, server)
        test_bad_input(server)
        test_disconnect(server)
        load_test(server, 16, 2, 16)
    finally:
        server.stop()
    test_reasoning(ktrun, args.plan)
    test_busy(ktrun, args.plan)
    print("serve: all checks passed")


if __name__ == "__main__":
    main()
