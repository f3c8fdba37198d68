#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""A raw HTTP/1.1 server for the response sink's specs (spec/84-multipart_sink_spec.lua).

Binds 127.0.0.1 on a free port, prints "http://127.0.0.1:PORT" as its first line of standard
output, and answers every GET with a canned response chosen by path and query; each answer
closes the connection. Written on sockets, not http.server, so that a response can be cut at a
chosen byte, dripped out a few bytes at a time, sent chunked, or left hanging.

  /multipart?sizes=10,0,5000   multipart/related; type="application/dicom", one part per size.
      Content of part i (1-based), n bytes: content(i, n) below (the spec builds the same).
      Part headers: Content-Type: application/dicom, Content-Location: /parts/<i>,
      X-Sha256: <hex of the content>, X-MiXeD-Case: Value-<i>.
    boundary=B      the boundary (default "hc-raw-boundary-42")
    ct=TEXT         the Content-Type header instead (e.g. without a boundary parameter)
    tricky=1        each part's content starts with look-alikes of the delimiter
    preamble=1      a preamble before the first delimiter and an epilogue after the last
    padding=1       spaces and tabs after each delimiter (transport padding)
    noclose=1       no close delimiter: the body ends right after the last part's content
    bighead=N       the first part has an extra header line of N bytes
    badhead=1       the first part has a header line without a colon
    cut=N           send only the first N bytes of the body, then close the connection
    hang=1          with cut: keep the connection open (silent) instead of closing it
    chunked=1       Transfer-Encoding: chunked (chunks of 1 to 4099 bytes), else Content-Length
    drip=N          send in pieces of N bytes, flushed one by one (small bodies only)
    pause=S         wait S seconds after each part's content (a stream that comes in steps)
  /dicom?size=N       200 application/dicom, content(1, N); also cut=, chunked=, drip=
  /status?code=404    that status with a small JSON error body
  /empty?code=204     that status, no body
"""
import hashlib
import socket
import sys
import threading
import time
from urllib.parse import parse_qs, urlsplit

BLOCK_CACHE = {}


def block(i):
    """256 bytes for part i: every byte value, in an order that depends on i."""
    b = BLOCK_CACHE.get(i)
    if b is None:
        b = bytes(((k * 31 + i * 7) % 256) for k in range(256))
        BLOCK_CACHE[i] = b
    return b


def content(i, n, prefix=b""):
    """Yields the n bytes of part i (prefix first, then the block pattern) in pieces <= 1 MiB."""
    head = prefix[:n]
    if head:
        yield head
    left = n - len(head)
    mib = block(i) * 4096
    while left > 0:
        piece = mib[: min(left, len(mib))]
        yield piece
        left -= len(piece)


def lookalikes(boundary):
    """Content that looks like delimiters and is not one: a partial boundary after CRLF, a full
    one after a bare LF or in mid-line, lone dashes and CRs. (The spec builds the same bytes.)"""
    b = boundary.encode()
    return (b"\r\n--" + b[:-1] + b"\r\n" + b"\r\r\n--" + b[:-1] + b"x" + b"\n--" + b + b"\r\n"
            + b"x--" + b + b"--\r\n" + b"\r\n-" + b"\r\n--" + b"\r" + b"\r\n--" + b[:1] + b"\r\n")


SHA_CACHE = {}


def content_sha256(i, n, prefix):
    key = (i, n, prefix)
    if key not in SHA_CACHE:
        h = hashlib.sha256()
        for c in content(i, n, prefix):
            h.update(c)
        SHA_CACHE[key] = h.hexdigest()
    return SHA_CACHE[key]


# A body is a list of items: bytes, or ("content", i, n, prefix) for content(i, n, prefix).

def multipart(q):
    """(content type, body items)."""
    boundary = q.get("boundary", "hc-raw-boundary-42")
    sizes = [int(s) for s in q.get("sizes", "").split(",") if s != ""]
    tricky = q.get("tricky") == "1"
    padding = b" \t " if q.get("padding") == "1" else b""
    delim = b"--" + boundary.encode()
    items = []
    if q.get("preamble") == "1":
        items.append(b"This is the preamble; it is to be ignored.\r\n--not-the-boundary\r\n")
    for i, n in enumerate(sizes, start=1):
        prefix = lookalikes(boundary) if tricky else b""
        head = delim + padding + b"\r\n" + b"Content-Type: application/dicom\r\n" \
            + b"Content-Location: /parts/%d\r\n" % i \
            + b"X-Sha256: " + content_sha256(i, n, prefix).encode() + b"\r\n" \
            + b"X-MiXeD-Case: Value-%d\r\n" % i
        if i == 1 and q.get("bighead"):
            head += b"X-Big: " + b"a" * int(q["bighead"]) + b"\r\n"
        if i == 1 and q.get("badhead") == "1":
            head += b"this line has no colon\r\n"
        items += [head + b"\r\n", ("content", i, n, prefix), b"\r\n"]
    if q.get("noclose") == "1":
        # Drop the CRLF that would start the close delimiter.
        if sizes:
            items.pop()
    else:
        items.append(delim + b"--" + padding + b"\r\n")
        if q.get("preamble") == "1":
            items.append(b"This is the epilogue.\r\n--" + boundary.encode() + b"\r\n")
    ct = q.get("ct", 'multipart/related; type="application/dicom"; boundary=' + boundary)
    return ct, items


def chunks(items, pause=0.0):
    """The body's pieces; with pause, a None after each part's content (the time to wait)."""
    for it in items:
        if isinstance(it, bytes):
            yield it
        else:
            yield from content(it[1], it[2], it[3])
            if pause > 0:
                yield None


def respond(conn, status, headers, items, q):
    """Sends a response with the body items, cut, dripped or chunked as q says."""
    chunked = q.get("chunked") == "1"
    cut = int(q["cut"]) if "cut" in q else None
    drip = int(q.get("drip", "0"))
    pause = float(q.get("pause", "0"))
    if chunked:
        headers = headers + [("Transfer-Encoding", "chunked")]
    else:
        total = sum(len(it) if isinstance(it, bytes) else it[2] for it in items)
        headers = headers + [("Content-Length", str(total))]
    head = "HTTP/1.1 %s\r\n" % status + "".join("%s: %s\r\n" % h for h in headers) + \
        "Connection: close\r\n\r\n"
    conn.sendall(head.encode())
    sent = 0
    sizes = [1, 7, 2, 4099, 3, 64, 1000]
    k = 0
    for c in chunks(items, pause):
        if c is None:
            time.sleep(pause)
            continue
        if cut is not None and sent + len(c) >= cut:
            c = c[: cut - sent]
        pos = 0
        while pos < len(c):
            step = drip if drip > 0 else len(c) - pos
            if chunked:
                step = min(step, sizes[k % len(sizes)])
                k += 1
            piece = c[pos: pos + step]
            conn.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n" if chunked else piece)
            if drip > 0:
                time.sleep(0.001)
            pos += step
        sent += len(c)
        if cut is not None and sent >= cut:
            if q.get("hang") == "1":
                time.sleep(60)
            return
    if chunked:
        conn.sendall(b"0\r\n\r\n")


def build(q):
    """(status, headers, body items) for the request q (its "_path" and query)."""
    path = q["_path"]
    if path == "/multipart":
        ct, items = multipart(q)
        return "200 OK", [("Content-Type", ct)], items
    if path == "/dicom":
        return "200 OK", [("Content-Type", "application/dicom")], [("content", 1, int(q.get("size", "0")), b"")]
    if path == "/status":
        code = int(q.get("code", "404"))
        body = b'{"error": {"code": %d, "message": "canned %d", "status": "NOT_FOUND"}}' % (code, code)
        return "%d Canned" % code, [("Content-Type", "application/json")], [body]
    if path == "/empty":
        return "%d Canned" % int(q.get("code", "204")), [], []
    return "400 Bad Request", [("Content-Type", "text/plain")], [b"unknown path " + path.encode()]


def handle(conn):
    try:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        line = data.split(b"\r\n", 1)[0].decode("latin-1")
        target = line.split(" ")[1]
        u = urlsplit(target)
        q = {k: v[-1] for k, v in parse_qs(u.query, keep_blank_values=True).items()}
        q["_path"] = u.path
        status, headers, items = build(q)
        if status.startswith("204") or status.startswith("304"):
            conn.sendall(("HTTP/1.1 %s\r\nConnection: close\r\n\r\n" % status).encode())
            return
        respond(conn, status, headers, items, q)
    except OSError:
        pass
    finally:
        try:
            conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        conn.close()


def main():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    print("http://127.0.0.1:%d" % s.getsockname()[1], flush=True)
    while True:
        conn, _ = s.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
