#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Hostile HTTP answers for the cosocket transport's caps and deadlines (spec/71).

Binds 127.0.0.1 on a free port, prints "http://127.0.0.1:PORT" as its first line, and answers
by path; each connection is closed at the end. A CONNECT (the server used as a proxy) is
answered with a status line that does not end for `mib` MiB (default 8).

  /long-status?mib=8    "HTTP/1.1 200 " and then `mib` MiB before the line's CRLF
  /long-header?mib=8    a header line of `mib` MiB, then a 2-byte body
  /long-trailer?mib=8   a chunked 2-byte body, then `mib` MiB of 1 KB trailer lines
  /long-chunk?mib=8     a chunk-size line ("1;x=aaa...") of `mib` MiB
  /drip?n=20&every=0.5  Content-Length: n, one byte every `every` seconds (close=1: no length,
                        the body ends when the connection closes)
  /drip-close/...       /drip?close=1 whatever follows (a base URL for DICOMweb requests)
  /drip-trailer?n=20&every=0.5   a chunked 2-byte body, then n trailer lines, one every `every` s
  /hang                 a head with Content-Length: 10, then silence for 30 s (the request's
                        body not read)
  /slow-read?kib=256&every=0.05   the request's body read `kib` KiB every `every` seconds (a
                        small receive buffer: the client's sends move, slowly), then 204
  /ok                   204, no body
  /seen                 the request lines received so far, as JSON (this one excluded)

Whatever is big is sent until it is all out or the client hangs up: a client that caps it
closes the connection early, and the server stops there.
"""
import json
import re
import socket
import sys
import threading
import time
from urllib.parse import parse_qs, urlsplit

SEEN = []


def arg(query, name, default):
    return type(default)(query.get(name, [default])[0])


def endless(conn, head, filler, mib, tail):
    conn.sendall(head)
    left = mib * 1024 * 1024
    while left > 0:
        conn.sendall(filler)
        left -= len(filler)
    conn.sendall(tail)


def slow_read(conn, query, head):
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    top, _, got = head.partition(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length:\s*(\d+)", top)
    length, got = int(length.group(1)) if length else 0, len(got)
    size = arg(query, "kib", 256) * 1024
    while got < length:
        time.sleep(arg(query, "every", 0.05))
        data = conn.recv(size)
        if not data:
            return
        got += len(data)
    conn.sendall(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")


def answer(conn, target, query):
    path = urlsplit(target).path
    mib = arg(query, "mib", 8)
    if path.startswith("/drip-close/"):  # a DICOMweb base URL: /drip-close/studies and the like
        path, query = "/drip", dict(query, close=["1"])
    if path == "/long-status":
        endless(conn, b"HTTP/1.1 200 ", b"a" * 65536, mib, b"\r\nContent-Length: 2\r\n\r\n[]")
    elif path == "/long-header":
        endless(conn, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-A: ", b"a" * 65536, mib,
                b"\r\nContent-Length: 2\r\n\r\n[]")
    elif path == "/long-trailer":
        endless(conn, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"2\r\n[]\r\n0\r\n", (b"X-T: " + b"t" * 1017 + b"\r\n") * 64, mib, b"\r\n")
    elif path == "/long-chunk":
        endless(conn, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"2;x=", b"a" * 65536, mib, b"\r\n[]\r\n0\r\n\r\n")
    elif path == "/drip":
        n = arg(query, "n", 20)
        framing = b"Connection: close" if arg(query, "close", 0) else b"Content-Length: %d" % n
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n%s\r\n\r\n" % framing)
        for _ in range(n):
            time.sleep(arg(query, "every", 0.5))
            conn.sendall(b" ")
    elif path == "/drip-trailer":
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"2\r\n[]\r\n0\r\n")
        for i in range(arg(query, "n", 20)):
            time.sleep(arg(query, "every", 0.5))
            conn.sendall(b"X-T%d: t\r\n" % i)
        conn.sendall(b"\r\n")
    elif path == "/hang":
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n")
        time.sleep(30)
    elif path == "/seen":
        body = json.dumps(SEEN).encode()
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                     b"Connection: close\r\n\r\n%s" % (len(body), body))
    else:
        conn.sendall(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")


def serve(conn):
    try:
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 65536:
            data = conn.recv(65536)
            if not data:
                return
            head += data
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split(" ")
        target = parts[1] if len(parts) > 1 else "/"
        if not target.startswith("/seen"):
            SEEN.append(head.decode("latin-1"))
        if parts[0] == "CONNECT":
            endless(conn, b"HTTP/1.1 200 ", b"a" * 65536, 8, b"\r\n\r\n")
            return
        if urlsplit(target).path == "/slow-read":
            slow_read(conn, parse_qs(urlsplit(target).query), head)
        else:
            answer(conn, target, parse_qs(urlsplit(target).query))
    except OSError:
        pass
    finally:
        conn.close()


def main():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    print("http://127.0.0.1:%d" % s.getsockname()[1], flush=True)
    while True:
        conn, _ = s.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
