#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""A hostile HTTP proxy for the specs (spec/71-openresty_nonblocking_spec.lua).

Binds 127.0.0.1 on a free port, prints "http://127.0.0.1:PORT" as its first line, reads each
request's head (a CONNECT) and answers as `mode` says, then closes the connection:
  garbage   a line that is not HTTP ("SSH-2.0-...") and an empty line
  endless   "HTTP/1.1 200 OK" and then header lines without end, until the client hangs up
"""
import socket
import sys
import threading


def serve(conn, mode):
    try:
        conn.recv(65536)
        if mode == "garbage":
            conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        else:
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n")
            filler = b"X-Filler: " + b"a" * 1000 + b"\r\n"
            while True:
                conn.sendall(filler)
    except OSError:
        pass
    finally:
        conn.close()


def main():
    mode = sys.argv[1]
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    print("http://127.0.0.1:%d" % s.getsockname()[1], flush=True)
    while True:
        conn, _ = s.accept()
        threading.Thread(target=serve, args=(conn, mode), daemon=True).start()


if __name__ == "__main__":
    main()
