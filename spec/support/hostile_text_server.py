#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""A hostile DICOMweb and token server for spec/87-hostile_text_spec.lua.

Binds 127.0.0.1 on a free port, prints "http://127.0.0.1:PORT" as its first line of standard
output, and answers every request by the first segment of its path (the rest is ignored, so a
DICOMweb base URL or an API endpoint can be put under it):

  /esc/...    every method: 400 with Google's error envelope whose message carries terminal
              controls: OSC (retitles), CSI (recolours), CR, LF, a C1 CSI in UTF-8 and a byte
              that is not UTF-8 (HOSTILE below; the spec builds the same bytes)
  /echo/...   every method: 400 with Google's envelope whose message quotes what the client
              sent: the Authorization header, every X-* header, the query string as received
              (percent-encoded), and each query value decoded; a POST to .../token answers
              OAuth's {"error": "invalid_grant", "error_description": ...} quoting the form body
              as received, each field decoded (assertion, refresh_token, client_secret) and the
              Authorization header (a Basic client authentication)
  /cells/...  GET: 200 application/dicom+json, one study whose PatientName carries HOSTILE,
              PatientID the bearer token it was sent, StudyDescription a name with a newline
  /ok/...     GET: 200 application/dicom+json "[]"

One line per request on stderr: method and path (no header or query values).
"""
import json
import socketserver
import sys
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qsl, urlsplit

HOSTILE = "evil\x1b]0;pwned\x07 \x1b[31mred\x1b[0m\r\nFAKE: second line\u009b31m c1 \udcff end"


def hostile_bytes():
    """HOSTILE as sent: UTF-8, with the lone surrogate standing for the byte 0xFF."""
    return HOSTILE.encode("utf-8", "surrogateescape")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        sys.stderr.write("%s %s\n" % (self.command, urlsplit(self.path).path))

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def send(self, status, ctype, data):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def envelope(self, status, message):
        # json.dumps would escape the control characters; a hostile server sends them raw where
        # JSON allows (every one but CR, LF and the other C0 controls, which are escaped).
        text = json.dumps({"error": {"code": status, "message": message, "status": "INVALID_ARGUMENT"}},
                          ensure_ascii=False)
        self.send(status, "application/json; charset=UTF-8", text.encode("utf-8", "surrogateescape"))

    def answer(self):
        url = urlsplit(self.path)
        mode = url.path.split("/")[1] if url.path.startswith("/") else ""
        body = self.body() if self.command in ("POST", "PUT") else b""
        if mode == "esc":
            return self.envelope(400, HOSTILE)
        if mode == "echo":
            if url.path.endswith("/token") and self.command == "POST":
                raw = body.decode("latin-1")
                fields = " ".join("%s=%s" % kv for kv in parse_qsl(raw))
                doc = {"error": "invalid_grant",
                       "error_description": "you sent " + raw + " that is " + fields
                       + " with Authorization: " + (self.headers.get("Authorization") or "")}
                return self.send(400, "application/json", json.dumps(doc).encode())
            auth = self.headers.get("Authorization") or ""
            values = " ".join("%s=%s" % kv for kv in parse_qsl(url.query))
            extra = ", ".join("%s: %s" % kv for kv in self.headers.items()
                              if kv[0].lower().startswith("x-"))
            return self.envelope(400, "you sent Authorization: %s, %s, query %s, that is %s"
                                 % (auth, extra, url.query, values))
        if mode == "cells" and self.command == "GET":
            auth = self.headers.get("Authorization") or ""
            token = auth.split(" ", 1)[1] if " " in auth else auth
            study = {
                "0020000D": {"vr": "UI", "Value": ["1.2.3.4"]},
                "00100010": {"vr": "PN", "Value": [{"Alphabetic": HOSTILE}]},
                "00100020": {"vr": "LO", "Value": [token]},
                "00081030": {"vr": "LO", "Value": ["line one\nline two"]},
            }
            text = json.dumps([study], ensure_ascii=False).encode("utf-8", "surrogateescape")
            return self.send(200, "application/dicom+json", text)
        if mode == "ok" and self.command == "GET":
            return self.send(200, "application/dicom+json", b"[]")
        return self.send(404, "text/plain", b"no such mode\n")

    do_GET = do_POST = do_DELETE = do_PUT = answer


class Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    srv = Server(("127.0.0.1", 0), Handler)
    print("http://127.0.0.1:%d" % srv.server_address[1], flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
