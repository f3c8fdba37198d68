#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""A hostile DICOMweb server for spec/85-hostile_answers_spec.lua: answers that try to exhaust the
client's memory, disk or patience, or pass junk off as instances.

  hostile_server.py [DICOM FILE]...

Binds 127.0.0.1 on a free port, prints "http://127.0.0.1:PORT" as its first line of standard
output. Every answer closes its connection. The first path segment names the scenario, later
segments holding "=" are its options, and the rest of the path (the DICOMweb path a client
appended: /studies/1.2/metadata, /projects/.../dicomWeb/studies, ...) is ignored, so that a
store's base URL (or an API endpoint) of http://127.0.0.1:PORT/<scenario>/<k=v>... picks the
answer to every request made through it.

  /gzip-json/mib=1024       200 application/dicom+json, Content-Encoding: gzip whatever was asked:
                            "[", then mib MiB of spaces, then "]" (about 1 KB on the wire per MiB)
  /gzip-multipart/mib=1024  200 multipart/related (application/dicom), Content-Encoding: gzip: one
                            part of mib MiB of zeros
  /gzip-te/mib=1024         the gzip-multipart bomb as Transfer-Encoding: gzip, chunked (which
                            libcurl decodes unasked)
  /gzip-files               200 multipart/related, Content-Encoding: gzip: the DICOM files given
                            on the command line, one part each (an honest compressed answer)
  /odd-coding               200 multipart/related with Content-Encoding "br, gzip" and an ESC
                            sequence (a coding stack nobody decodes, text a terminal would obey)
  /endless                  200 multipart/related: one part that never ends (256 KiB writes as
                            fast as the client reads; no Content-Length, ends when the client goes)
  /trickle/every=0.5        200 multipart/related: a part's header, then one byte every `every` s
  /parts/n=100000/size=1    200 multipart/related: n parts of `size` bytes ("X"); n=0: no end
  /mixed/pattern=DXDEXR     200 multipart/related, one part per letter: D the next DICOM file of
                            the command line, X text that is not DICOM, E an empty part, H an
                            HTML page, R the last DICOM file again (a repeated SOP Instance UID);
                            pause=0.2: that many seconds after each part's closing delimiter;
                            alone=D: the pattern of an answer to an instance asked for alone
                            (a path ending in /instances/<uid>), whichever was asked; cut=1: the
                            answer (of the pattern) ends in the middle of a part, its connection
                            closed short of the Content-Length it announced
  /trailer/lines=0          200 multipart/related, chunked: every file whole, then after the last
                            chunk a trailer line "HTTP/1.1: 200 OK" and `lines` lines of 1 KB;
                            empty=1: no chunk before the last, and a trailer "Content-Type:
                            text/html" and "X-From-Trailer: yes" (fields that are no headers)
  /status/line=HTTP%2F%1B   the status line given (percent-encoded: any bytes), then a good answer:
                            200's header fields and the DICOM files given on the command line as
                            multipart/related; stored=1: instead, the STOW-RS answer that lists
                            them all as stored (a POST's body is read first, whatever the scenario);
                            delay=1: that many seconds before the answer
  /_requests                the requests seen so far as JSON: [{"path", "accept_encoding",
                            "in_flight"}...], in_flight: the requests being answered when it
                            came, itself included

Except under gzip-json, a path ending in /instances (a QIDO-RS search for instances) is answered
with a DICOM JSON list of the command line's files (study, series and SOP Instance UIDs), and
one ending in /series with their series (and NumberOfSeriesRelatedInstances, unless the
scenario's segments hold nocount=1), so that a
retrieve with skip_existing finds what it has to fetch; junkuid=1 adds to the instances one whose
SOP Instance UID is an escape sequence.
"""
import json
import socket
import struct
import sys
import threading
import time
import zlib
from urllib.parse import unquote_to_bytes, urlsplit

BOUNDARY = b"hostile-boundary-7"
MULTIPART = 'multipart/related; type="application/dicom"; boundary=' + BOUNDARY.decode()
FILES = sys.argv[1:]
SEEN = []
IN_FLIGHT = 0
SEEN_LOCK = threading.Lock()
MIB = 1 << 20


def part_head(ctype=b"application/dicom"):
    return b"--" + BOUNDARY + b"\r\nContent-Type: " + ctype + b"\r\n\r\n"


CLOSE = b"\r\n--" + BOUNDARY + b"--\r\n"


BOMBS = {}


def gzip_bomb(prefix, fill, mib, suffix):
    key = (prefix, fill, mib, suffix)
    if key not in BOMBS:
        BOMBS[key] = make_gzip_bomb(prefix, fill, mib, suffix)
    return BOMBS[key]


def make_gzip_bomb(prefix, fill, mib, suffix):
    """A valid gzip stream of prefix + mib MiB of the byte fill + suffix, built in well under a
    second: one MiB of fill deflated after a full flush compresses to the same bytes each time,
    so the MiB block is repeated instead of compressed again."""
    chunk = fill * MIB
    head = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = head.compress(prefix) + head.flush(zlib.Z_FULL_FLUSH)
    one = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = one.compress(chunk) + one.flush(zlib.Z_FULL_FLUSH)
    tail = zlib.compressobj(9, zlib.DEFLATED, -15)
    last = tail.compress(suffix) + tail.flush(zlib.Z_FINISH)
    crc = zlib.crc32(prefix)
    for _ in range(mib):
        crc = zlib.crc32(chunk, crc)
    crc = zlib.crc32(suffix, crc)
    size = (len(prefix) + mib * MIB + len(suffix)) & 0xFFFFFFFF
    return (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + first + block * mib + last
            + struct.pack("<II", crc & 0xFFFFFFFF, size))


def read_file(i):
    with open(FILES[i], "rb") as f:
        return f.read()


def multipart_of(parts):
    body = b""
    for ctype, data in parts:
        body += part_head(ctype) + data + b"\r\n"
    return body[:-2] + CLOSE if parts else b"--" + BOUNDARY + b"--\r\n"


def send_head(conn, status, headers, length=None):
    lines = ["HTTP/1.1 " + status] + ["%s: %s" % h for h in headers]
    if length is not None:
        lines.append("Content-Length: %d" % length)
    lines.append("Connection: close")
    conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))


def send_whole(conn, ctype, body, extra=()):
    send_head(conn, "200 OK", [("Content-Type", ctype)] + list(extra), len(body))
    conn.sendall(body)


INSTANCES = []


def instances_json():
    """The command line's files as QIDO-RS results (read with pydicom once)."""
    if not INSTANCES:
        import pydicom
        for path in FILES:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            INSTANCES.append({tag: {"vr": "UI", "Value": [str(ds[kw].value)]} for tag, kw in (
                ("0020000D", "StudyInstanceUID"), ("0020000E", "SeriesInstanceUID"), ("00080018", "SOPInstanceUID"))})
    return json.dumps(INSTANCES).encode()


def series_json(with_counts=True):
    """The series of the command line's files as QIDO-RS results, with their instance counts
    (NumberOfSeriesRelatedInstances) unless with_counts is false."""
    instances_json()
    counts, order = {}, []
    for item in INSTANCES:
        key = (item["0020000D"]["Value"][0], item["0020000E"]["Value"][0])
        if key not in counts:
            order.append(key)
            counts[key] = 0
        counts[key] += 1
    items = []
    for st, se in order:
        item = {"0020000D": {"vr": "UI", "Value": [st]}, "0020000E": {"vr": "UI", "Value": [se]}}
        if with_counts:
            item["00201209"] = {"vr": "IS", "Value": [counts[(st, se)]]}
        items.append(item)
    return json.dumps(items).encode()


def answer(conn, scenario, q, path):
    if scenario != "gzip-json" and path.endswith("/instances"):
        body = instances_json()
        if q.get("junkuid") == "1":
            # one more instance, its SOP Instance UID an escape sequence a terminal would obey
            junk = dict(INSTANCES[0], **{"00080018": {"vr": "UI", "Value": ["1.2.3\x1b]0;pwned\x07"]}})
            body = json.dumps([junk] + INSTANCES).encode()
        send_whole(conn, "application/dicom+json", body)
    elif scenario != "gzip-json" and path.endswith("/series"):
        send_whole(conn, "application/dicom+json", series_json(q.get("nocount") != "1"))
    elif scenario == "gzip-json":
        body = gzip_bomb(b"[", b" ", int(q.get("mib", "1024")), b"]")
        send_whole(conn, "application/dicom+json", body, [("Content-Encoding", "gzip")])
    elif scenario == "gzip-multipart":
        body = gzip_bomb(part_head(), b"\0", int(q.get("mib", "1024")), CLOSE)
        send_whole(conn, MULTIPART, body, [("Content-Encoding", "gzip")])
    elif scenario == "gzip-te":
        body = gzip_bomb(part_head(), b"\0", int(q.get("mib", "1024")), CLOSE)
        send_head(conn, "200 OK", [("Content-Type", MULTIPART), ("Transfer-Encoding", "gzip, chunked")])
        for i in range(0, len(body), 65536):
            piece = body[i:i + 65536]
            conn.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
        conn.sendall(b"0\r\n\r\n")
    elif scenario == "gzip-files":
        plain = multipart_of([(b"application/dicom", read_file(i)) for i in range(len(FILES))])
        send_whole(conn, MULTIPART, gzip_of(plain), [("Content-Encoding", "gzip")])
    elif scenario == "odd-coding":
        body = multipart_of([(b"application/dicom", b"x" * 100)])
        send_whole(conn, MULTIPART, body, [("Content-Encoding", "br, gzip\x1b]0;pwned\x07")])
    elif scenario == "endless":
        send_head(conn, "200 OK", [("Content-Type", MULTIPART)])
        conn.sendall(part_head())
        block = b"\0" * (256 * 1024)
        while True:
            conn.sendall(block)
    elif scenario == "trickle":
        every = float(q.get("every", "0.5"))
        send_head(conn, "200 OK", [("Content-Type", MULTIPART)])
        conn.sendall(part_head())
        while True:
            time.sleep(every)
            conn.sendall(b"\0")
    elif scenario == "parts":
        n, size = int(q.get("n", "100000")), int(q.get("size", "1"))
        send_head(conn, "200 OK", [("Content-Type", MULTIPART)])
        one = part_head() + b"X" * size + b"\r\n"
        batch = one * 1000
        sent = 0
        while n == 0 or sent < n:
            k = 1000 if n == 0 else min(1000, n - sent)
            conn.sendall(batch if k == 1000 else one * k)
            sent += k
        conn.sendall(b"--" + BOUNDARY + b"--\r\n")
    elif scenario == "mixed":
        parts, next_file, last = [], 0, None
        alone = "alone" in q and "/instances/" in path
        for c in q["alone"] if alone else q.get("pattern", "DXD"):
            if c == "D":
                last = read_file(next_file)
                next_file += 1
                parts.append((b"application/dicom", last))
            elif c == "R":
                parts.append((b"application/dicom", last))
            elif c == "X":
                parts.append((b"application/dicom", b"not DICOM\n" * 30))
            elif c == "E":
                parts.append((b"application/dicom", b""))
            elif c == "H":
                parts.append((b"text/html", b"<html><body>\x1b[31mError\x1b[0m</body></html>\n"))
        body = multipart_of(parts)
        pause = float(q.get("pause", "0"))
        if q.get("cut") == "1" and not alone:
            # a part's head and a few bytes of it after the others, then the connection goes
            cut = body[:-len(CLOSE)] + b"\r\n" + part_head() + b"\0" * 100
            send_head(conn, "200 OK", [("Content-Type", MULTIPART)], len(cut) + 100000)
            conn.sendall(cut)
        elif pause <= 0:
            send_whole(conn, MULTIPART, body)
        else:
            # each part's delimiter, then a pause: the client sees the parts complete one by one
            send_head(conn, "200 OK", [("Content-Type", MULTIPART)], len(body))
            at = 0
            while True:
                end = body.find(b"\r\n--" + BOUNDARY, at + 1)
                if end < 0:
                    conn.sendall(body[at:])
                    break
                conn.sendall(body[at:end + 4 + len(BOUNDARY)])
                at = end + 4 + len(BOUNDARY)
                time.sleep(pause)
    elif scenario == "trailer":
        # every file whole, chunked, then trailer lines after the last chunk: one that starts as
        # a status line does, and `lines` more (a flood)
        send_head(conn, "200 OK", [("Content-Type", MULTIPART), ("Transfer-Encoding", "chunked"),
                                   ("Trailer", "X-Pad")])
        body = multipart_of([(b"application/dicom", read_file(i)) for i in range(len(FILES))])
        if q.get("empty") == "1":
            conn.sendall(b"0\r\nContent-Type: text/html\r\nX-From-Trailer: yes\r\n\r\n")
            return
        for i in range(0, len(body), 8192):
            chunk = body[i:i + 8192]
            conn.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        trailer = b"0\r\nHTTP/1.1: 200 OK\r\n"
        pad = b"X-Pad: " + b"x" * 1000 + b"\r\n"
        for _ in range(int(q.get("lines", "0"))):
            trailer += pad
            if len(trailer) > 65536:
                conn.sendall(trailer)
                trailer = b""
        conn.sendall(trailer + b"\r\n")
    elif scenario == "status":
        # a status line no HTTP parser should read as a success, and all else a good answer
        if q.get("stored") == "1":
            instances_json()
            ctype = "application/dicom+json"
            stored = [{"00081155": {"vr": "UI", "Value": i["00080018"]["Value"]}} for i in INSTANCES]
            body = json.dumps({"00081199": {"vr": "SQ", "Value": stored}}).encode()
        else:
            ctype = MULTIPART
            body = multipart_of([(b"application/dicom", read_file(i)) for i in range(len(FILES))])
        head = "\r\n".join(["Content-Type: " + ctype, "Content-Length: %d" % len(body), "Connection: close"])
        time.sleep(float(q.get("delay", "0")))
        conn.sendall(unquote_to_bytes(q.get("line", "")) + b"\r\n" + head.encode() + b"\r\n\r\n" + body)
    else:
        body = b"unknown scenario " + scenario.encode()
        send_head(conn, "400 Bad Request", [("Content-Type", "text/plain")], len(body))
        conn.sendall(body)


def gzip_of(data):
    c = zlib.compressobj(6, zlib.DEFLATED, 31)
    return c.compress(data) + c.flush()


def handle(conn):
    global IN_FLIGHT
    counted = False
    try:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        raw_head, body = data.split(b"\r\n\r\n", 1)
        head = raw_head.decode("latin-1").split("\r\n")
        target = head[0].split(" ")[1]
        accept_encoding = None
        length = 0
        for line in head[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "accept-encoding":
                accept_encoding = value.strip()
            elif name.strip().lower() == "content-length":
                length = int(value.strip())
        # the request's body read whole: closing on unread bytes resets the connection, and the
        # client may see the reset before the answer
        got = len(body)
        while got < length:
            chunk = conn.recv(65536)
            if not chunk:
                return
            got += len(chunk)
        path = urlsplit(target).path
        segments = [s for s in path.split("/") if s]
        if segments == ["_requests"]:
            with SEEN_LOCK:
                body = json.dumps(SEEN).encode()
            send_whole(conn, "application/json", body)
            return
        with SEEN_LOCK:
            IN_FLIGHT += 1
            counted = True
            SEEN.append({"path": path, "accept_encoding": accept_encoding, "in_flight": IN_FLIGHT})
        q = dict(s.split("=", 1) for s in segments[1:] if "=" in s)
        answer(conn, segments[0] if segments else "", q, path)
    except OSError:
        pass
    finally:
        if counted:
            with SEEN_LOCK:
                IN_FLIGHT -= 1
        try:
            conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        conn.close()


def main():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    print("http://127.0.0.1:%d" % s.getsockname()[1], flush=True)
    while True:
        conn, _ = s.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
