#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""A capture server for spec/44-api_call_spec.lua: records what a client sends, answers {}.

    capture_server.py LOG [ANSWERS]

Binds 127.0.0.1 on a free port and prints "http://127.0.0.1:PORT" as its first line of standard
output. Every request, whatever its verb and path, is read whole (Content-Length or chunked) and
recorded as one JSON line appended to LOG, before the answer goes out:

    {"verb": "POST", "target": "/v1/...?a=b" (as it came on the request line, not decoded),
     "headers": {"content-type": "...", ...} (names in lower case; a repeated one joined by ", "),
     "body_hex": "..."}

then answered 200, Content-Type: application/json, body {} (the oracle's capture server in
scripts/api-oracle answers the same). HTTP/1.1 with keep-alive; runs until killed.

ANSWERS, when given, is a file the spec writes: a JSON list of answers, {"status": 200,
"content_type": "application/json", "body": "...", "headers": {"Name": "value"}} (headers
optional), each given once, to the next requests in
order (the list rewritten without it); when it is absent or empty, {} again. This is how a spec
plays a hostile or failing server: bodies that are not JSON, lists that are not lists, page
tokens that come back, 503 then 200.
"""
import http.server
import json
import os
import sys
import threading

LOCK = threading.Lock()


def next_answer():
    """The next canned answer of the ANSWERS file (taken out of it), or None."""
    if len(sys.argv) < 3 or not os.path.exists(sys.argv[2]):
        return None
    with open(sys.argv[2], encoding="utf-8") as f:
        answers = json.load(f)
    if not answers:
        return None
    with open(sys.argv[2] + ".tmp", "w", encoding="utf-8") as f:
        json.dump(answers[1:], f)
    os.replace(sys.argv[2] + ".tmp", sys.argv[2])
    return answers[0]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: without TCP_NODELAY the body waits for the client's
    # delayed ACK (40 ms a request).
    disable_nagle_algorithm = True

    def log_message(self, fmt, *args):  # the log file is the record; stderr stays quiet
        pass

    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def handle_any(self):
        body = self.read_body()
        headers = {}
        for name, value in self.headers.items():
            name = name.lower()
            headers[name] = headers[name] + ", " + value if name in headers else value
        line = json.dumps({"verb": self.command, "target": self.path, "headers": headers, "body_hex": body.hex()})
        with LOCK:
            with open(sys.argv[1], "a", encoding="utf-8") as log:
                log.write(line + "\n")
        status, content_type, answer, extra = 200, "application/json", b"{}", {}
        with LOCK:
            canned = next_answer()
        if canned is not None:
            status = canned.get("status", 200)
            content_type = canned.get("content_type", "application/json")
            answer = canned.get("body", "").encode("utf-8")
            extra = canned.get("headers", {})
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for name, value in extra.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = handle_any


def main():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print("http://127.0.0.1:%d" % server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
