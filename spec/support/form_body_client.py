#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""A client that sends a form body without a length, as spec/70 needs it.

  form_body_client.py h1 PORT PATH SIZE CHUNK STALL [EXT]
      POST to 127.0.0.1:PORT/PATH an application/x-www-form-urlencoded body of SIZE bytes
      ("name=aaa..."), HTTP/1.1 chunked, in chunks of CHUNK bytes (32 KiB of them every 20 ms); then, with STALL > 0, leaves the
      body open (no last chunk) and waits STALL seconds for an answer; with STALL 0 ends the body
      and waits for the answer. EXT: a chunk extension of that many bytes on every chunk.
  form_body_client.py h2 URL SIZE STALL
      The same through curl over HTTP/2 (h2c, no Content-Length), the body from a pipe left open
      (a byte more every 0.1 s).

Prints the answer's status (or "none"; "closed" when curl saw the HTTP/2 stream end without it) and
the seconds it took after the last byte of SIZE sent.
"""
import socket
import subprocess
import sys
import threading
import time


def body(size):
    return b"name=" + b"a" * (size - 5)


def h1(port, path, size, chunk, stall, ext=0):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(("POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
               "Transfer-Encoding: chunked\r\n\r\n" % path).encode())
    data = body(size)
    extension = b";x=" + b"e" * ext if ext else b""
    framed = b"".join(b"%x%s\r\n%s\r\n" % (len(data[i:i + chunk]), extension, data[i:i + chunk])
                      for i in range(0, len(data), chunk))
    try:
        # in pieces of 32 KiB, 20 ms apart: the gateway looks between them, as on a real network
        for i in range(0, len(framed), 32768):
            s.sendall(framed[i:i + 32768])
            time.sleep(0.02)
        if stall == 0:
            s.sendall(b"0\r\n\r\n")
    except OSError:
        pass  # the gateway answered and closed before taking it all
    t0 = time.time()
    s.settimeout(stall if stall > 0 else 30)
    try:
        head = s.recv(65536)
    except (socket.timeout, OSError):
        head = b""
    status = head.split(b"\r\n")[0].split(b" ")
    print(status[1].decode() if len(status) > 1 else "none", "%.3f" % (time.time() - t0))


def h2(url, size, stall):
    # curl prints the answer's head as it comes (-v, on stderr), while its upload is still open
    p = subprocess.Popen(["curl", "-sS", "-v", "--http2-prior-knowledge", "-X", "POST", "-H",
                          "Content-Type: application/x-www-form-urlencoded", "-T", "-", "-o", "/dev/null", url],
                         stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen = []

    def watch():
        for line in p.stderr:
            if line.startswith(b"< HTTP/2 "):
                seen.append((line.split()[2].decode(), time.time()))
                return
            # curl 7.88 drops an answer whose stream nginx resets (the body left unread) after it
            if line.startswith(b"* stream 1 closed"):
                seen.append(("closed", time.time()))
                return

    reader = threading.Thread(target=watch, daemon=True)
    reader.start()
    p.stdin.write(body(size))
    p.stdin.flush()
    t0 = time.time()
    # curl reads its stdin blocking: a byte now and then lets it look at what came meanwhile
    while reader.is_alive() and time.time() - t0 < stall:
        try:
            p.stdin.write(b"a")
            p.stdin.flush()
        except OSError:
            break
        reader.join(0.1)
    if seen:
        print(seen[0][0], "%.3f" % max(0.0, seen[0][1] - t0))
    else:
        print("none", "%.3f" % (time.time() - t0))
    p.kill()
    p.wait()


if __name__ == "__main__":
    a = sys.argv
    if a[1] == "h1":
        h1(int(a[2]), a[3], int(a[4]), int(a[5]), float(a[6]), int(a[7]) if len(a) > 7 else 0)
    else:
        h2(a[2], int(a[3]), float(a[4]))
