#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""A small stand-in for what only Google has, in front of a real Orthanc.

It speaks the Cloud Healthcare API's URL shape for DICOMweb StoreInstances
(POST /v1/{dicomStore}/dicomWeb/studies[/{uid}]), checks credentials the way
Google does (bearer tokens it issued, a static token, self-signed RS256 JWTs,
API keys), answers errors in Google's JSON envelope, adds what Orthanc lacks
(409 for a SOP Instance UID stored with different bytes, a single
application/dicom body, XML when dicom+json is not asked for) and forwards
the DICOM to Orthanc's DICOMweb plugin. Reads pass through to Orthanc, streamed.
Google's delete (studies and series as long-running operations, instances at
once) is done with Orthanc's REST API. The admin surface (datasets, DICOM, FHIR
and HL7v2 stores, IAM policies, long-running operations) is emulator_admin.py's;
with a directory standing for Cloud Storage (--gcs-root), DICOM import, export
(to it, or to a file standing for a BigQuery table) and de-identification do
their work for real (emulator_gcs.py).
Credentials without key files (STS token exchange and refresh, IAM Credentials'
generateAccessToken, an EC2 instance metadata service on its own port, the
check of a signed AWS GetCallerIdentity request) are emulator_federation.py's.
It also plays the OAuth token endpoint
(/token), the GCE metadata server (/computeMetadata/v1/...), and takes test
orders under /_control/ (keys, users, stores, config, faults, stats).

JWT signatures are checked with python3-cryptography, never with the code
under test. Request bodies are spooled to a temp file, never held whole in
memory. The log (stderr) never shows a token, key or assertion.
"""

import argparse
import base64
import hashlib
import http.client
import io
import json
import mmap
import os
import re
import secrets
import socket
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from xml.sax.saxutils import escape, quoteattr

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

import emulator_admin as admin
import emulator_federation as federation
import emulator_fhir as fhir

SCOPE_HEALTHCARE = "https://www.googleapis.com/auth/cloud-healthcare"
SCOPE_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
SELF_SIGNED_AUD = "https://healthcare.googleapis.com/"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
STORE_RE = re.compile(
    r"^/v1/(projects/[^/]+/locations/[^/]+/datasets/[^/]+/dicomStores/[^/:]+)"
    r"/dicomWeb/(.*)$")
DELETE_RE = re.compile(r"^studies/([^/]+)(?:/series/([^/]+)(?:/instances/([^/]+))?)?/?$")
UID_RE = re.compile(r"^(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*$")
DELETE_METHODS = {"Study": "DeleteStudy", "Series": "DeleteSeries"}
MSG_MISSING = ("Request is missing required authentication credential. Expected OAuth 2 access "
               "token, login cookie or other valid authentication credential. See "
               "https://developers.google.com/identity/sign-in/web/devconsole-project.")
MSG_INVALID = ("Request had invalid authentication credentials. Expected OAuth 2 access token, "
               "login cookie or other valid authentication credential. See "
               "https://developers.google.com/identity/sign-in/web/devconsole-project.")
federation.MESSAGES.update(missing=MSG_MISSING, invalid=MSG_INVALID)
STATUS_NAMES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                404: "NOT_FOUND", 408: "DEADLINE_EXCEEDED", 409: "ALREADY_EXISTS",
                413: "FAILED_PRECONDITION", 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED",
                500: "INTERNAL", 501: "UNIMPLEMENTED", 502: "UNAVAILABLE",
                503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
CONFLICT_DETAIL = "an instance with the same SOP Instance UID already exists with different content"
CHUNK = 1 << 20

DEFAULT_CONFIG = {
    "expires_in": 3600,          # seconds, for tokens issued from now on
    "metadata_enabled": True,    # False: metadata paths 404, metadata port refuses
    "partial_status": 409,       # status when some instances failed and others stored
    "require_scope": True,       # 403 when a token lacks cloud-healthcare/cloud-platform
    "check_conflicts": True,     # 409 for same SOP Instance UID with different bytes
    "metadata_email": "default@test-project.iam.gserviceaccount.com",
    "project_id": "test-project",
    "operation_polls": 1,        # polls of a new operation answered without "done"
    "operation_error": None,     # {"code", "message"}: new operations end with this error
    "operation_units": 10,       # size of the progress counter of import/export/... operations
    "locations": ["asia-southeast1", "europe-west4", "us-central1", "us-east4"],
}
DEFAULT_CONFIG.update(federation.DEFAULT_CONFIG)   # aws_zone, aws_imdsv2


def log(line):
    sys.stderr.write("emulator: %s\n" % line)
    sys.stderr.flush()


def b64url_decode(s):
    s = s.encode() if isinstance(s, str) else s
    return base64.urlsafe_b64decode(s + b"=" * (-len(s) % 4))


def sha256_hex(s):
    return hashlib.sha256(s.encode()).hexdigest()


# ---------------------------------------------------------------- state

class State:
    """Everything the control API changes; one lock guards it all."""

    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        with self.lock:
            self.config = dict(DEFAULT_CONFIG)
            self.keys = {}            # kid -> {"key": public key, "email": str}
            self.users = {}           # client_id -> {secret, refresh_token, scopes}
            self.tokens = {}          # token -> {"scopes": set, "expiry": float}
            self.faults = []
            self.stats = {
                "token_requests": {}, "metadata_requests": 0, "store_requests": {},
                "store_requests_total": 0, "tokens_issued": 0, "bytes_received": 0,
                "faults_fired": 0, "bearer_credentials": [], "api_keys": [],
                "auth_kinds": {}, "instances_forwarded": 0, "conflicts": 0,
                "requests": [], "operations_created": 0, "operation_polls": 0,
                "deleted": {}, "admin_requests": {}, "operations_cancelled": 0,
                "iam_policies_set": 0, "gcs_objects_read": 0, "gcs_objects_written": 0,
                "bigquery_rows_written": 0, "instances_deidentified": 0,
            }
            # datasets, stores (DICOM stores: those --store names and those made since),
            # IAM policies, operations.
            admin.init_state(self)
            # audiences, subject tokens, service accounts, AWS credentials and their stats.
            federation.init_state(self)

    def bump(self, key, sub=None, n=1):
        with self.lock:
            if sub is None:
                self.stats[key] += n
            else:
                d = self.stats[key]
                d[sub] = d.get(sub, 0) + n

    def issue_token(self, scopes, expires_in=None, principal=None):
        """A new access token for scopes; principal is who it stands for (serviceAccount:...,
        user:..., principal://...), what impersonation checks."""
        with self.lock:
            expires_in = int(self.config["expires_in"] if expires_in is None else expires_in)
            token = "tok-" + secrets.token_urlsafe(24)
            self.tokens[token] = {"scopes": set(scopes), "expiry": time.time() + expires_in,
                                  "principal": principal}
            self.stats["tokens_issued"] += 1
            return token, expires_in

    def take_fault(self, kind, parent=None, method=None, makes_operation=False, http_method=None, path=None):
        """The first pending rule for kind (and this dicomStore, when the rule names one in
        "parent"; this admin method, when it names one in "method"; a method that makes an
        operation, when it sets "operation_error"; this HTTP method, when it names one in
        "http_method"; a path below dicomWeb/ that the regex "path" finds), with one use
        consumed, or None."""
        with self.lock:
            for rule in self.faults:
                if rule.get("match", "store") == kind and rule.get("times", 1) > 0 \
                        and rule.get("parent") in (None, parent) \
                        and rule.get("method") in (None, method) \
                        and rule.get("http_method") in (None, http_method) \
                        and (rule.get("path") is None or re.search(rule["path"], path or "")) \
                        and (makes_operation or not rule.get("operation_error")):
                    if rule.get("skip", 0) > 0:
                        # this many matching requests pass first (no later rule sees them)
                        rule["skip"] -= 1
                        return None
                    rule["times"] = rule.get("times", 1) - 1
                    self.stats["faults_fired"] += 1
                    if rule["times"] <= 0:
                        self.faults.remove(rule)
                    return dict(rule)
        return None


def load_public_key(pem):
    data = pem.encode() if isinstance(pem, str) else pem
    if b"CERTIFICATE" in data:
        return x509.load_pem_x509_certificate(data).public_key()
    return serialization.load_pem_public_key(data)


def verify_jwt(state, jwt):
    """Check an RS256 JWT's signature against a registered kid.

    Returns (header, claims, None) or (None, None, reason)."""
    parts = jwt.split(".")
    if len(parts) != 3:
        return None, None, "not a JWT"
    try:
        header = json.loads(b64url_decode(parts[0]))
        claims = json.loads(b64url_decode(parts[1]))
        sig = b64url_decode(parts[2])
    except (ValueError, TypeError):
        return None, None, "malformed JWT"
    if not isinstance(header, dict) or not isinstance(claims, dict):
        return None, None, "malformed JWT"
    if header.get("alg") != "RS256":
        return None, None, "Invalid JWT: alg must be RS256"
    if header.get("typ", "JWT") != "JWT":
        return None, None, "Invalid JWT: typ must be JWT"
    with state.lock:
        entry = state.keys.get(header.get("kid"))
    if entry is None:
        return None, None, "Invalid JWT Signature."
    try:
        entry["key"].verify(sig, (parts[0] + "." + parts[1]).encode(),
                            padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return None, None, "Invalid JWT Signature."
    if claims.get("iss") != entry["email"]:
        return None, None, "Invalid JWT: iss does not match the key's client_email"
    iat, exp, now = claims.get("iat"), claims.get("exp"), time.time()
    if not isinstance(iat, (int, float)) or not isinstance(exp, (int, float)) \
            or abs(iat - now) > 60 or exp - iat > 3600 or exp <= now:
        return None, None, ("Invalid JWT: Token must be a short-lived token (60 minutes) and in a "
                            "reasonable timeframe. Check your iat and exp values in the JWT claim.")
    return header, claims, None


# ---------------------------------------------------------------- multipart

class BoundedFile(io.RawIOBase):
    """A read-only window [start, end) of a file, so pydicom stops at a part's end."""

    def __init__(self, f, start, end):
        super().__init__()
        self.f, self.start, self.end, self.pos = f, start, end, 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self.pos

    def seek(self, off, whence=0):
        size = self.end - self.start
        self.pos = max(0, off if whence == 0 else self.pos + off if whence == 1 else size + off)
        return self.pos

    def read(self, n=-1):
        left = self.end - self.start - self.pos
        if left <= 0:
            return b""
        n = left if n is None or n < 0 else min(n, left)
        self.f.seek(self.start + self.pos)
        data = self.f.read(n)
        self.pos += len(data)
        return data

    def readinto(self, b):
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)


def parse_content_type(value):
    """('multipart/related', {'type': ..., 'boundary': ...}) from a header value."""
    if not value:
        return "", {}
    main, _, rest = value.partition(";")
    params = {}
    for m in re.finditer(r'\s*([^=;\s]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)\s*;?', rest):
        v = m.group(2).strip()
        if v.startswith('"'):
            v = v[1:-1].replace('\\"', '"')
        params[m.group(1).lower()] = v
    return main.strip().lower(), params


def split_multipart(mm, boundary):
    """Parts of a multipart body as [(headers dict, start, end)], or raise ValueError.

    Strict like a careful server: CRLF line ends and a closing delimiter."""
    delim = b"--" + boundary.encode("latin-1")
    size = len(mm)
    if mm[:len(delim)] == delim:
        pos = 0
    else:
        pos = mm.find(b"\r\n" + delim)
        if pos < 0:
            raise ValueError("no multipart boundary found")
        pos += 2
    parts = []
    while True:
        after = pos + len(delim)
        if mm[after:after + 2] == b"--":
            break
        if mm[after:after + 2] != b"\r\n":
            raise ValueError("malformed multipart delimiter line")
        head_end = mm.find(b"\r\n\r\n", after)
        if head_end < 0:
            raise ValueError("multipart part headers not terminated")
        headers = {}
        raw = bytes(mm[after + 2:head_end]).decode("latin-1")
        for line in raw.split("\r\n") if raw else []:
            name, sep, value = line.partition(":")
            if not sep:
                raise ValueError("malformed multipart part header")
            headers[name.strip().lower()] = value.strip()
        start = head_end + 4
        nxt = mm.find(b"\r\n" + delim, start)
        if nxt < 0:
            raise ValueError("multipart body has no closing delimiter")
        parts.append((headers, start, nxt))
        pos = nxt + 2
        if pos >= size:
            raise ValueError("multipart body has no closing delimiter")
    return parts


def probe_part(f, start, end):
    """(sop_class, sop_instance, study) of a DICOM part, or raise ValueError."""
    import pydicom  # slow import, only when DICOM arrives
    try:
        ds = pydicom.dcmread(BoundedFile(f, start, end), force=True, stop_before_pixels=True,
                             defer_size=4096)
        sop = ds.get("SOPInstanceUID")
        cls = ds.get("SOPClassUID")
        study = ds.get("StudyInstanceUID")
    except Exception as e:  # pydicom raises many kinds on garbage
        raise ValueError("not a DICOM instance: %s" % e) from None
    if not sop:
        raise ValueError("not a DICOM instance: no SOP Instance UID")
    return str(cls or ""), str(sop).strip("\0 "), str(study or "").strip("\0 ")


# ---------------------------------------------------------------- DICOM JSON / XML

def rewrite_urls(obj, base):
    """Replace Orthanc's .../dicom-web/ prefix in every RetrieveURL with base."""
    if isinstance(obj, list):
        for x in obj:
            rewrite_urls(x, base)
    elif isinstance(obj, dict):
        for tag, attr in obj.items():
            if not isinstance(attr, dict):
                continue
            vals = attr.get("Value")
            if tag == "00081190" and isinstance(vals, list):
                attr["Value"] = [re.sub(r"^https?://[^/]+/dicom-web/", base, v)
                                 if isinstance(v, str) else v for v in vals]
            elif attr.get("vr") == "SQ" and isinstance(vals, list):
                rewrite_urls(vals, base)


def failure_item(cls, sop, detail):
    item = {"00081197": {"vr": "US", "Value": [272]},
            "00090010": {"vr": "LO", "Value": ["GOOGLE"]},
            "00091097": {"vr": "LT", "Value": [detail]}}
    if cls:
        item["00081150"] = {"vr": "UI", "Value": [cls]}
    if sop:
        item["00081155"] = {"vr": "UI", "Value": [sop]}
    return dict(sorted(item.items()))


def to_xml(ds):
    """DICOM JSON -> PS3.19 NativeDicomModel, private tags the way Google writes them."""
    out = ['<?xml version="1.0" encoding="UTF-8"?>\n<NativeDicomModel xml:space="preserve">']
    xml_dataset(ds, out)
    out.append("</NativeDicomModel>\n")
    return "".join(out)


def xml_dataset(ds, out):
    from pydicom.datadict import keyword_for_tag
    creators = {}
    for tag, attr in ds.items():
        g, e = int(tag[:4], 16), int(tag[4:], 16)
        if g % 2 == 1 and 0x10 <= e <= 0xFF and attr.get("Value"):
            creators[(g, e)] = str(attr["Value"][0])
    for tag in sorted(ds):
        attr = ds[tag]
        g, e = int(tag[:4], 16), int(tag[4:], 16)
        vr = attr.get("vr", "UN")
        if g % 2 == 1:
            if 0x10 <= e <= 0xFF:
                continue  # the creator is carried by privateCreator=
            creator = creators.get((g, e >> 8))
            out.append('<DicomAttribute tag="%04X00%02X" vr="%s"%s>'
                       % (g, e & 0xFF, vr,
                          " privateCreator=%s" % quoteattr(creator) if creator else ""))
        else:
            kw = keyword_for_tag((g << 16) | e)
            out.append('<DicomAttribute tag="%s" vr="%s"%s>'
                       % (tag.upper(), vr, ' keyword="%s"' % kw if kw else ""))
        for i, v in enumerate(attr.get("Value") or [], 1):
            if vr == "SQ":
                out.append('<Item number="%d">' % i)
                xml_dataset(v, out)
                out.append("</Item>")
            elif vr == "PN":
                name = v.get("Alphabetic", "") if isinstance(v, dict) else str(v)
                out.append('<PersonName number="%d"><Alphabetic><FamilyName>%s</FamilyName>'
                           '</Alphabetic></PersonName>' % (i, escape(name)))
            else:
                out.append('<Value number="%d">%s</Value>' % (i, escape(str(v))))
        out.append("</DicomAttribute>")


# ---------------------------------------------------------------- HTTP

class Dropped(Exception):
    """The connection was closed on purpose (a fault rule) or by the client."""


class Handler(admin.AdminMixin, federation.FederationMixin, fhir.FhirMixin, BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "hc-emulator"
    sys_version = ""
    timeout = 600
    metadata_only = False

    # -- plumbing

    def handle_expect_100(self):
        # Decide later: like Google, a request refused on its headers gets its
        # final answer without a 100 Continue.
        self._expect = True
        return True

    def log_message(self, fmt, *args):
        pass

    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def begin(self):
        self._expect = getattr(self, "_expect", False)
        self._body_left = None      # None: not started
        self._chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        self._body_done = False
        self._status = None
        self._sent = 0
        self._t0 = time.monotonic()
        self._api_method = None     # the admin method's id once routed (request log)
        self.url = urllib.parse.urlsplit(self.path)
        self.query = urllib.parse.parse_qs(self.url.query, keep_blank_values=True)

    def body_chunks(self, limit=None):
        """Yield the request body (Content-Length or chunked), once."""
        if self._body_done:
            return
        if self._expect:
            self._expect = False
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.wfile.flush()
        state = self.server.state
        if self._chunked:
            budget = limit
            while True:
                line = self.rfile.readline(1024)
                if not line:
                    raise Dropped("client closed mid-body")
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                while size > 0:
                    want = min(size, CHUNK) if budget is None else min(size, CHUNK, budget)
                    if want <= 0:
                        return  # partial read on purpose: body not done
                    data = self.rfile.read(want)
                    if not data:
                        raise Dropped("client closed mid-body")
                    size -= len(data)
                    if budget is not None:
                        budget -= len(data)
                    state.bump("bytes_received", n=len(data))
                    yield data
                self.rfile.readline(8)
        else:
            left = int(self.headers.get("Content-Length") or 0)
            if limit is not None:
                left = min(left, limit)
            while left > 0:
                data = self.rfile.read1(min(left, CHUNK)) if hasattr(self.rfile, "read1") \
                    else self.rfile.read(min(left, CHUNK))
                if not data:
                    raise Dropped("client closed mid-body")
                left -= len(data)
                state.bump("bytes_received", n=len(data))
                yield data
            if limit is not None:
                return  # partial read on purpose: body not done
        self._body_done = True

    def body_bytes(self, cap=1 << 20):
        data = b"".join(self.body_chunks())
        return data[:cap]

    def drain(self):
        """Read and drop what is left of the body, so keep-alive stays usable."""
        try:
            for _ in self.body_chunks():
                pass
        except (Dropped, OSError, ValueError):
            self.close_connection = True

    def has_body(self):
        return self._chunked or int(self.headers.get("Content-Length") or 0) > 0

    def send(self, status, body=b"", ctype=None, headers=None):
        if isinstance(body, str):
            body = body.encode()
        if not self._body_done and self.has_body():
            if self._expect:
                # The client has not sent the body: answer and close, as servers do.
                self.close_connection = True
            else:
                self.drain()
        self.send_response(status)
        if ctype:
            self.send_header("Content-Type", ctype)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()
        self._status, self._sent = status, len(body)
        if self.close_connection and not self._body_done and self.has_body():
            self.linger()

    def linger(self):
        """Half-close and read briefly, so unread body bytes do not turn into a reset."""
        try:
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(2)
            while self.connection.recv(65536):
                pass
        except OSError:
            pass

    def send_json(self, status, obj, headers=None):
        self.send(status, json.dumps(obj, indent=2) + "\n", "application/json; charset=UTF-8",
                  headers)

    def send_envelope(self, status, message, details=None, headers=None, status_name=None):
        err = {"code": status, "message": message,
               "status": status_name or STATUS_NAMES.get(status, "UNKNOWN")}
        if details:
            err["details"] = details
        self.send_json(status, {"error": err}, headers)

    def finish_log(self):
        q = "&".join("%s=%s" % (k, "REDACTED" if k in ("access_token", "oauth_token", "key")
                                else (v[0][:40] if v else ""))
                     for k, v in self.query.items())
        log("%s %s%s -> %s %d bytes in %.3f s" % (
            self.command, self.url.path, "?" + q if q else "", self._status or "dropped",
            self._sent, time.monotonic() - self._t0))

    def dispatch(self):
        self.begin()
        try:
            self.route()
        except Dropped:
            self.close_connection = True
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception:
            traceback.print_exc()
            if self._status is None:
                try:
                    self.send_envelope(500, "emulator error (see its log)")
                except OSError:
                    pass
            self.close_connection = True
        finally:
            self.finish_log()
            self._expect = False

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = dispatch

    # -- routing

    def route(self):
        path = self.url.path
        if self.metadata_only:
            return self.metadata()
        if self.aws_metadata_only:
            return self.aws_metadata()
        if path.startswith("/_control/"):
            return self.control(path[len("/_control/"):])
        if path == "/token":
            return self.token()
        if path == "/" or path.startswith("/computeMetadata/"):
            return self.metadata()
        m = STORE_RE.match(path)
        if m:
            return self.dicomweb(m.group(1), m.group(2))
        if path.startswith("/v1/") and (self.federation_route(path) or self.fhir_route(path)
                                        or self.admin()):
            return
        self.send_envelope(404, "The requested URL %s was not found on this server." % path)

    def apply_fault(self, kind, parent=None):
        """Apply a pending fault rule; the status it answered with, or False."""
        rule = self.server.state.take_fault(kind, parent)
        if rule is None:
            return False
        return self.answer_fault(kind, rule)

    def answer_fault(self, kind, rule):
        """Apply a rule taken for this request; the status it answered with, or False (a
        delay only, or an operation_error the admin method applies)."""
        if rule.get("delay"):
            time.sleep(float(rule["delay"]))
        if "drop_after_bytes" in rule:
            n = int(rule["drop_after_bytes"])
            try:
                for _ in self.body_chunks(limit=n):
                    pass
            finally:
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            if kind in ("store", "admin"):
                self.record("dropped")
            raise Dropped("fault: dropped after %d bytes" % n)
        if "body" in rule and kind in ("operation", "admin"):
            # An answer of the spec's own (a hostile Operation, a list page), as JSON; with
            # fresh_page_token a new nextPageToken each time: a list that never ends.
            body = rule["body"]
            if rule.get("fresh_page_token") and isinstance(body, dict):
                body = dict(body, nextPageToken=secrets.token_urlsafe(24))
            status = int(rule.get("status") or 200)
            self.send_json(status, body)
            return status
        status = rule.get("status")
        if not status:
            return False
        status = int(status)
        headers = {}
        if rule.get("retry_after") is not None:
            headers["Retry-After"] = str(rule["retry_after"])
        if kind in ("metadata", "aws_metadata"):
            if kind == "metadata":
                headers["Metadata-Flavor"] = "Google"
            self.send(status, rule.get("message", "fault injected\n"), "text/plain", headers)
        elif kind in ("token", "sts"):
            self.send_json(status, {"error": rule.get("error", "temporarily_unavailable"),
                                    "error_description": rule.get("message", "fault injected")},
                           headers)
        else:
            details = None
            if rule.get("retry_delay"):
                details = [{"@type": "type.googleapis.com/google.rpc.RetryInfo",
                            "retryDelay": str(rule["retry_delay"])}]
            self.send_envelope(status, rule.get("message", "fault injected (status %d)" % status),
                               details, headers)
        return status

    # -- control

    def control(self, what):
        st = self.server.state
        try:
            arg = json.loads(self.body_bytes() or b"null")
        except ValueError:
            return self.send_json(400, {"error": "body is not JSON"})
        if what == "stats" and self.command == "GET":
            with st.lock:
                return self.send_json(200, json.loads(json.dumps(st.stats)))
        if what == "methods" and self.command == "GET":
            return self.send_json(200, admin.served_methods())
        if what == "logs" and self.command == "GET":
            logs = admin.operation_logs(st, (self.query.get("operation") or [""])[0])
            if logs is None:
                return self.send_json(404, {"error": "no such operation"})
            return self.send_json(200, logs)
        if self.command != "POST":
            if what == "faults":
                with st.lock:
                    return self.send_json(200, list(st.faults))
            return self.send_json(405, {"error": "use POST"})
        arg = arg if arg is not None else {}
        if what == "reset":
            st.reset()
            self.server.set_metadata(True)
            return self.send_json(200, {"ok": True})
        if what == "keys":
            for k in arg if isinstance(arg, list) else [arg]:
                try:
                    key = load_public_key(k["public_key_pem"])
                except Exception as e:
                    return self.send_json(400, {"error": "bad key: %s" % e})
                with st.lock:
                    st.keys[k["kid"]] = {"key": key, "email": k["client_email"]}
            return self.send_json(200, {"ok": True})
        if what == "authorized_users":
            for u in arg if isinstance(arg, list) else [arg]:
                with st.lock:
                    st.users[u["client_id"]] = {
                        "secret": u["client_secret"], "refresh_token": u["refresh_token"],
                        "scopes": u.get("scopes") or [SCOPE_PLATFORM], "email": u.get("email")}
            return self.send_json(200, {"ok": True})
        if what == "stores":
            names = [s.get("name") if isinstance(s, dict) else None
                     for s in (arg if isinstance(arg, list) else [arg])]
            for name in names:
                if not isinstance(name, str) or not re.match(
                        r"^projects/[^/]+/locations/[^/]+/datasets/[^/]+/dicomStores/[^/:]+$",
                        name):
                    return self.send_json(400, {"error": "not a dicomStore name: %r" % (name,)})
            with st.lock:
                for name in names:
                    admin.add_dicom_store(st, name)
                known = sorted(n for n, e in st.stores.items() if e["kind"] == "dicomStores")
            return self.send_json(200, {"ok": True, "stores": known})
        if what == "tokens":
            token = arg.get("token")
            scopes = arg.get("scopes") or [SCOPE_HEALTHCARE]
            with st.lock:
                if token is None:
                    token = "tok-" + secrets.token_urlsafe(24)
                st.tokens[token] = {"scopes": set(scopes),
                                    "expiry": time.time() + float(arg.get("expires_in", 3600)),
                                    "principal": arg.get("principal")}
            return self.send_json(200, {"access_token": token})
        if what == "config":
            unknown = set(arg) - set(DEFAULT_CONFIG)
            if unknown:
                return self.send_json(400, {"error": "unknown config keys: %s; valid: %s"
                                            % (", ".join(sorted(unknown)),
                                               ", ".join(sorted(DEFAULT_CONFIG)))})
            with st.lock:
                st.config.update(arg)
                cfg = dict(st.config)
            self.server.set_metadata(bool(cfg["metadata_enabled"]))
            return self.send_json(200, cfg)
        if what == "faults":
            rules = arg if isinstance(arg, list) else arg.get("rules", [arg])
            for r in rules:
                if r.get("match", "store") not in ("store", "token", "metadata", "operation",
                                                   "admin", "sts", "impersonation",
                                                   "aws_metadata"):
                    return self.send_json(400, {"error": "match must be store, token, metadata, "
                                                "operation, admin, sts, impersonation or "
                                                "aws_metadata"})
                err = r.get("operation_error")
                if err is not None and not (isinstance(err, dict) and
                                            isinstance(err.get("code"), int)):
                    return self.send_json(400, {"error": "operation_error must be "
                                                "{\"code\": <int>, \"message\": ...}"})
            with st.lock:
                if isinstance(arg, dict) and arg.get("replace"):
                    st.faults = []
                st.faults.extend(dict(r) for r in rules)
                return self.send_json(200, {"pending": len(st.faults)})
        if self.federation_control(what, arg):
            return None
        return self.send_json(404, {"error": "unknown control endpoint %s" % what})

    # -- token endpoint

    def token(self):
        st = self.server.state
        if self.command != "POST":
            return self.send_json(405, {"error": "invalid_request",
                                        "error_description": "POST required"})
        form = urllib.parse.parse_qs(self.body_bytes().decode("utf-8", "replace"))
        f = {k: v[0] for k, v in form.items()}
        grant = f.get("grant_type", "")
        st.bump("token_requests", grant or "(none)")
        if self.apply_fault("token"):
            return
        if grant == JWT_BEARER:
            _, claims, why = verify_jwt(st, f.get("assertion", ""))
            if why:
                return self.send_json(400, {"error": "invalid_grant", "error_description": why})
            auds = {self.server.url + "/token", "http://%s/token" % self.headers.get("Host", "")}
            if claims.get("aud") not in auds:
                return self.send_json(400, {"error": "invalid_grant",
                                            "error_description": "Invalid JWT: aud must be %s"
                                            % (self.server.url + "/token")})
            scopes = str(claims.get("scope") or "").split()
            if not scopes:
                return self.send_json(400, {"error": "invalid_scope", "error_description":
                                            "Invalid OAuth scope or ID token audience provided."})
            if "sub" in claims and not isinstance(claims["sub"], str):
                return self.send_json(400, {"error": "invalid_grant",
                                            "error_description": "Invalid JWT: sub"})
            principal = "serviceAccount:" + str(claims["iss"])
        elif grant == "refresh_token":
            with st.lock:
                user = st.users.get(f.get("client_id"))
            if user is None or user["secret"] != f.get("client_secret"):
                return self.send_json(401, {"error": "invalid_client",
                                            "error_description": "Unauthorized"})
            if user["refresh_token"] != f.get("refresh_token"):
                return self.send_json(400, {"error": "invalid_grant",
                                            "error_description": "Bad Request"})
            scopes = f.get("scope", "").split() or user["scopes"]
            principal = "user:" + (user.get("email") or f["client_id"])
        else:
            return self.send_json(400, {"error": "unsupported_grant_type",
                                        "error_description": "Invalid grant_type: %s" % grant})
        token, expires_in = st.issue_token(scopes, principal=principal)
        self.send_json(200, {"access_token": token, "expires_in": expires_in,
                             "token_type": "Bearer"})

    # -- metadata server

    def metadata(self):
        st = self.server.state
        st.bump("metadata_requests")
        with st.lock:
            cfg = dict(st.config)
        if not cfg["metadata_enabled"]:
            return self.send(404, "metadata server switched off\n", "text/plain")
        if self.apply_fault("metadata"):
            return
        flavor = {"Metadata-Flavor": "Google"}
        path = self.url.path
        if path in ("/", "/computeMetadata/", "/computeMetadata/v1", "/computeMetadata/v1/"):
            return self.send(200, "computeMetadata/\n" if path == "/" else "instance/\nproject/\n",
                             "application/text", flavor)
        if self.headers.get("Metadata-Flavor") != "Google":
            return self.send(403, "Missing Metadata-Flavor:Google header.\n", "text/html", flavor)
        base = "/computeMetadata/v1/instance/service-accounts/default/"
        if path == base + "token":
            scopes = [s for s in ",".join(self.query.get("scopes", [])).split(",") if s]
            token, expires_in = st.issue_token(scopes or [SCOPE_PLATFORM],
                                               principal="serviceAccount:" + cfg["metadata_email"])
            return self.send(200, json.dumps({"access_token": token, "expires_in": expires_in,
                                              "token_type": "Bearer"}),
                             "application/json", flavor)
        if path == base + "email":
            return self.send(200, cfg["metadata_email"], "application/text", flavor)
        if path == base + "scopes":
            return self.send(200, SCOPE_PLATFORM + "\n", "application/text", flavor)
        if path == "/computeMetadata/v1/project/project-id":
            return self.send(200, cfg["project_id"], "application/text", flavor)
        self.send(404, "not found\n", "text/html", flavor)

    # -- the API

    def authenticate(self):
        """('ok', scopes) or ('missing'|'invalid', None); counts what it saw."""
        st = self.server.state
        auth = self.headers.get("Authorization", "")
        cred = None
        if auth[:7].lower() == "bearer ":
            cred = auth[7:].strip()
        else:
            for name in ("access_token", "oauth_token"):
                if self.query.get(name):
                    cred = self.query[name][0]
                    break
        if cred:
            h = sha256_hex(cred)
            with st.lock:
                if h not in st.stats["bearer_credentials"]:
                    st.stats["bearer_credentials"].append(h)
                info = st.tokens.get(cred)
                static = cred == self.server.args.token
            if static:
                st.bump("auth_kinds", "static_token")
                return "ok", {SCOPE_PLATFORM}
            if info is not None:
                if info["expiry"] <= time.time():
                    st.bump("auth_kinds", "expired_token")
                    return "invalid", None
                st.bump("auth_kinds", "issued_token")
                return "ok", info["scopes"]
            if cred.count(".") == 2:
                _, claims, why = verify_jwt(st, cred)
                aud = claims.get("aud") if claims else None
                if why is None and claims.get("sub", claims["iss"]) == claims["iss"] and \
                        (aud == SELF_SIGNED_AUD or (aud is None and claims.get("scope"))):
                    st.bump("auth_kinds", "self_signed_jwt")
                    return "ok", set(str(claims.get("scope") or SCOPE_PLATFORM).split())
            st.bump("auth_kinds", "invalid")
            return "invalid", None
        if self.query.get("key"):
            key = self.query["key"][0]
            with st.lock:
                h = sha256_hex(key)
                if h not in st.stats["api_keys"]:
                    st.stats["api_keys"].append(h)
            if key == self.server.args.api_key:
                st.bump("auth_kinds", "api_key")
                return "ok", {SCOPE_PLATFORM}
            st.bump("auth_kinds", "invalid_key")
            return "invalid_key", None
        st.bump("auth_kinds", "none")
        return "missing", None

    def record(self, status):
        st = self.server.state
        st.bump("store_requests", str(status))
        st.bump("store_requests_total")
        entry = {"method": self.command, "path": self.url.path,
                 "query": sorted(self.query), "status": status}
        if self._api_method:
            entry["api_method"] = self._api_method
        for h in ("Content-Type", "Content-Length", "Transfer-Encoding", "Expect", "Accept",
                  "User-Agent", "Content-Encoding", "X-Goog-User-Project"):
            if h in self.headers:
                entry[h.lower()] = self.headers[h]
        with st.lock:
            st.stats["requests"].append(entry)
            del st.stats["requests"][:-200]

    def authorize(self):
        """The config when the request's credential may use the API; else answers 401/403
        and returns None."""
        st = self.server.state
        www = {"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/"'}
        verdict, scopes = self.authenticate()
        if verdict == "invalid_key":
            # Google answers a bad API key with 400, not 401 (observed; Google's client
            # libraries see the same envelope).
            self.record(400)
            self.send_envelope(400, "API key not valid. Please pass a valid API key.",
                               [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                                 "reason": "API_KEY_INVALID", "domain": "googleapis.com",
                                 "metadata": {"service": "healthcare.googleapis.com"}}])
            return None
        if verdict != "ok":
            self.record(401)
            self.send_envelope(401, MSG_MISSING if verdict == "missing" else MSG_INVALID,
                               headers=www)
            return None
        with st.lock:
            cfg = dict(st.config)
        if cfg["require_scope"] and not scopes & {SCOPE_HEALTHCARE, SCOPE_PLATFORM}:
            self.record(403)
            self.send_envelope(403, "Request had insufficient authentication scopes.",
                               [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                                 "reason": "ACCESS_TOKEN_SCOPE_INSUFFICIENT",
                                 "domain": "googleapis.com"}])
            return None
        return cfg

    def dicomweb(self, parent, rest):
        st = self.server.state
        cfg = self.authorize()
        if cfg is None:
            return
        with st.lock:
            known = st.stores.get(parent, {}).get("kind") == "dicomStores"
        if not known:
            self.record(404)
            return self.send_envelope(404, "DICOM store not found: %s" % parent)
        rule = st.take_fault("store", parent, http_method=self.command, path=rest)
        if rule is not None and "cut_after_bytes" in rule and self.command == "GET":
            # a read whose answer starts and is cut: what a dropped connection looks like
            if rule.get("delay"):
                time.sleep(float(rule["delay"]))
            return self.record(self.forward_get(parent, rest, cut=int(rule["cut_after_bytes"])))
        status = rule is not None and self.answer_fault("store", rule)
        if status:
            return self.record(status)
        m = re.match(r"^studies(?:/([^/]+))?/?$", rest)
        if self.command == "POST" and m:
            status = self.store(parent, m.group(1), cfg)
            return self.record(status)
        if self.command in ("GET", "HEAD"):
            status = self.forward_get(parent, rest)
            return self.record(status)
        m = DELETE_RE.match(rest)
        if self.command == "DELETE" and m:
            return self.record(self.delete(parent, [u for u in m.groups() if u], cfg))
        self.record(405)
        self.send_envelope(405 if self.command != "POST" else 404,
                           "Method %s not allowed on %s" % (self.command, rest))

    def orthanc(self):
        u = urllib.parse.urlsplit(self.server.args.orthanc)
        conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=3600)
        return conn, u.path.rstrip("/")

    def orthanc_headers(self):
        h = {}
        if self.server.args.orthanc_auth:
            h["Authorization"] = "Basic " + base64.b64encode(
                self.server.args.orthanc_auth.encode()).decode()
        return h

    def wants_json(self):
        accept = self.headers.get("Accept", "").lower()
        return "application/dicom+json" in accept or "application/json" in accept

    def store(self, parent, study, cfg):
        ctype, params = parse_content_type(self.headers.get("Content-Type", ""))
        tmpdir = self.server.args.tmp
        with tempfile.TemporaryFile(dir=tmpdir) as spool:
            for data in self.body_chunks():
                spool.write(data)
            spool.flush()
            size = spool.tell()
            mm = mmap.mmap(spool.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
            try:
                return self.store_spooled(parent, study, cfg, ctype, params, spool, mm, size)
            finally:
                if size:
                    mm.close()

    def store_spooled(self, parent, study, cfg, ctype, params, spool, mm, size):
        st = self.server.state
        # Which parts are DICOM instances we can check and re-frame.
        if ctype == "application/dicom":
            parts = [({"content-type": "application/dicom"}, 0, size)]
        elif ctype == "multipart/related" and params.get("type", "").lower() == "application/dicom" \
                and params.get("boundary"):
            try:
                parts = split_multipart(mm, params["boundary"])
            except ValueError as e:
                self.send_envelope(400, "Invalid multipart body: %s" % e)
                return 400
            if not parts:
                self.send_envelope(400, "Invalid multipart body: no parts")
                return 400
            if any(parse_content_type(h.get("content-type", "application/dicom"))[0]
                   != "application/dicom" for h, _, _ in parts):
                parts = None
        else:
            parts = None
        if parts is None:
            # Not plain DICOM parts: Orthanc decides (it answers 415 for most).
            return self.forward_store(parent, study, [(None, 0, size)], spool, mm,
                                      self.headers.get("Content-Type", ""), [])

        failures, keep = [], []
        for headers, start, end in parts:
            try:
                cls, sop, _ = probe_part(spool, start, end)
            except ValueError as e:
                failures.append(failure_item("", "", str(e)))
                continue
            if cfg["check_conflicts"] and self.conflicts(sop, mm, start, end):
                st.bump("conflicts")
                failures.append(failure_item(cls, sop, CONFLICT_DETAIL))
                continue
            keep.append((sop, start, end))
        if not keep:
            body = {"00081198": {"vr": "SQ", "Value": failures}}
            self.send_dicom(409, body)
            return 409
        boundary = "hc-emulator-" + secrets.token_hex(12)
        return self.forward_store(parent, study, [(s, a, b) for s, a, b in keep], spool, mm,
                                  'multipart/related; type="application/dicom"; boundary=' +
                                  boundary, failures, boundary, cfg)

    def conflicts(self, sop, mm, start, end):
        """True when Orthanc holds this SOP Instance UID with other bytes."""
        conn, root = self.orthanc()
        try:
            conn.request("POST", root + "/tools/lookup", body=sop.encode(),
                         headers=self.orthanc_headers())
            r = conn.getresponse()
            found = json.loads(r.read() or b"[]") if r.status == 200 else []
            ids = [x["ID"] for x in found if x.get("Type") == "Instance"]
            if not ids:
                return False
            conn.request("GET", "%s/instances/%s/file" % (root, ids[0]),
                         headers=self.orthanc_headers())
            r = conn.getresponse()
            if r.status != 200:
                r.read()
                return False
            stored = hashlib.sha256()
            n = 0
            while True:
                data = r.read(CHUNK)
                if not data:
                    break
                n += len(data)
                stored.update(data)
            if n != end - start:
                return True
            mine = hashlib.sha256()
            view = memoryview(mm)
            for off in range(start, end, CHUNK):
                mine.update(view[off:min(end, off + CHUNK)])
            view.release()
            return mine.digest() != stored.digest()
        finally:
            conn.close()

    def forward_store(self, parent, study, parts, spool, mm, ctype, failures,
                      boundary=None, cfg=None):
        """POST the parts to Orthanc (re-framed when boundary is given) and answer."""
        st = self.server.state
        if boundary:
            pieces = []
            for _, start, end in parts:
                pieces.append(("--%s\r\nContent-Type: application/dicom\r\n\r\n"
                               % boundary).encode())
                pieces.append((start, end))
                pieces.append(b"\r\n")
            pieces.append(("--%s--\r\n" % boundary).encode())
        else:
            pieces = [(start, end) for _, start, end in parts]
        length = sum(len(p) if isinstance(p, bytes) else p[1] - p[0] for p in pieces)
        conn, root = self.orthanc()
        path = root + "/dicom-web/studies" + ("/" + urllib.parse.quote(study) if study else "")
        try:
            conn.putrequest("POST", path, skip_accept_encoding=True)
            headers = {"Content-Type": ctype, "Content-Length": str(length),
                       "Accept": "application/dicom+json"}
            headers.update(self.orthanc_headers())
            for k, v in headers.items():
                conn.putheader(k, v)
            conn.endheaders()
            view = memoryview(mm) if length and not isinstance(mm, bytes) else None
            try:
                for p in pieces:
                    if isinstance(p, bytes):
                        conn.send(p)
                    else:
                        for off in range(p[0], p[1], CHUNK):
                            conn.send(view[off:min(p[1], off + CHUNK)])
            finally:
                if view is not None:
                    view.release()
            r = conn.getresponse()
            body = r.read()
            rctype = r.getheader("Content-Type", "")
        finally:
            conn.close()
        if boundary:
            st.bump("instances_forwarded", n=len(parts))
        status = r.status
        try:
            result = json.loads(body) if body and "json" in rctype else None
        except ValueError:
            result = None
        if not isinstance(result, dict):
            if failures:
                # Orthanc refused the rest outright; still tell about ours.
                self.send_dicom(status if status >= 400 else 409,
                                {"00081198": {"vr": "SQ", "Value": failures}})
                return status if status >= 400 else 409
            self.send(status, body, rctype or None)
            return status
        rewrite_urls(result, "%s/v1/%s/dicomWeb/" % (self.server.public_url, parent))
        if st.gcs is not None:
            # What the store holds, for its export and de-identification.
            admin.add_holdings(st, parent, [
                str(item["00081155"]["Value"][0])
                for item in (result.get("00081199") or {}).get("Value") or []
                if isinstance(item, dict) and (item.get("00081155") or {}).get("Value")])
        if failures:
            seq = result.setdefault("00081198", {"vr": "SQ"})
            seq["Value"] = list(seq.get("Value") or []) + failures
            stored = (result.get("00081199") or {}).get("Value") or []
            status = (cfg or DEFAULT_CONFIG)["partial_status"] if stored else 409
        self.send_dicom(status, result)
        return status

    def send_dicom(self, status, result):
        result = dict(sorted(result.items()))
        if self.wants_json():
            self.send(status, json.dumps(result), "application/dicom+json")
        else:
            self.send(status, to_xml(result), "application/dicom+xml")

    def forward_get(self, parent, rest, cut=None):
        """QIDO/WADO reads pass through to Orthanc (handy to check what was stored). DICOM JSON
        is rewritten (RetrieveURLs); anything else is copied in CHUNK pieces as it arrives, so a
        large study goes through with flat memory. cut: the connection is closed once that many
        bytes of the answer's body went out (a fault rule's cut_after_bytes)."""
        conn, root = self.orthanc()
        try:
            headers = self.orthanc_headers()
            if self.headers.get("Accept"):
                headers["Accept"] = self.headers["Accept"]
            q = "&".join("%s=%s" % (urllib.parse.quote(k), urllib.parse.quote(v, safe="*?,^:@/!$'();"))
                         for k, vs in self.query.items()
                         if k not in ("access_token", "oauth_token", "key") for v in vs)
            conn.request(self.command, root + "/dicom-web/" + rest + ("?" + q if q else ""),
                         headers=headers)
            r = conn.getresponse()
            ctype = r.getheader("Content-Type")
            if ctype and "json" in ctype:
                body = r.read()
                try:
                    obj = json.loads(body)
                    rewrite_urls(obj, "%s/v1/%s/dicomWeb/" % (self.server.public_url, parent))
                    body = json.dumps(obj).encode()
                except ValueError:
                    pass
                self.send(r.status, body, ctype)
            else:
                self.send_stream(r, ctype, cut)
        finally:
            conn.close()
        return r.status

    def send_stream(self, r, ctype, cut=None):
        """Answers with Orthanc's response r, its body copied CHUNK by CHUNK: with its
        Content-Length when it gave one, else chunked; cut: closed after that many bytes."""
        if not self._body_done and self.has_body():
            self.drain()
        length = r.getheader("Content-Length")
        bodiless = self.command == "HEAD" or r.status in (204, 304)
        self.send_response(r.status)
        if ctype:
            self.send_header("Content-Type", ctype)
        if length is not None:
            self.send_header("Content-Length", length)
        elif not bodiless:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self._status = r.status
        if bodiless:
            self.wfile.flush()
            return
        try:
            while True:
                data = r.read(CHUNK)
                if not data:
                    break
                if cut is not None and self._sent + len(data) >= cut:
                    data = data[:cut - self._sent]
                if length is None:
                    self.wfile.write(b"%x\r\n" % len(data))
                    self.wfile.write(data)
                    self.wfile.write(b"\r\n")
                else:
                    self.wfile.write(data)
                self._sent += len(data)
                if cut is not None and self._sent >= cut:
                    self.wfile.flush()
                    self.close_connection = True
                    try:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    self.record("cut")
                    raise Dropped("fault: answer cut after %d bytes" % cut)
        except (http.client.HTTPException, OSError) as e:
            # Orthanc cut the answer: cut ours too, so the client sees a transport error and
            # not a shorter body that looks complete.
            log("Orthanc's answer ended early: %s" % e)
            self.close_connection = True
            raise Dropped("upstream cut") from None
        if length is None:
            self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    # -- delete (Google's own methods; Orthanc's DICOMweb plugin has no DELETE)

    def orthanc_json(self, method, path, body=None):
        """(status, decoded JSON or None) of one call to Orthanc's REST API."""
        conn, root = self.orthanc()
        try:
            conn.request(method, root + path, body=body, headers=self.orthanc_headers())
            r = conn.getresponse()
            data = r.read()
        finally:
            conn.close()
        try:
            return r.status, json.loads(data) if data else None
        except ValueError:
            return r.status, None

    def orthanc_resource(self, level, uids):
        """Orthanc's ID of the study/series/instance with these UIDs (the last one the
        resource's own, those before it its parents'), or None."""
        _, found = self.orthanc_json("POST", "/tools/lookup", uids[-1].encode())
        plural = {"Study": "studies", "Series": "series", "Instance": "instances"}[level]
        parents = [("study", "StudyInstanceUID"), ("series", "SeriesInstanceUID")][:len(uids) - 1]
        for hit in found if isinstance(found, list) else []:
            if not isinstance(hit, dict) or hit.get("Type") != level:
                continue
            ok = True
            for (sub, tag), want in zip(parents, uids):
                status, info = self.orthanc_json("GET", "/%s/%s/%s" % (plural, hit["ID"], sub))
                tags = info.get("MainDicomTags", {}) if isinstance(info, dict) else {}
                ok = ok and status == 200 and tags.get(tag) == want
            if ok:
                return hit["ID"]
        return None

    def delete(self, parent, uids, cfg):
        """DeleteStudy / DeleteSeries (a long-running operation) and DeleteInstance
        (synchronous, an empty JSON object), done on Orthanc's REST API."""
        st = self.server.state
        level = ("Study", "Series", "Instance")[len(uids) - 1]
        bad = [u for u in uids if len(u) > 64 or not UID_RE.match(u)]
        if bad:
            self.send_envelope(400, "Invalid UID: %s" % bad[0])
            return 400
        oid = self.orthanc_resource(level, uids)
        if oid is None:
            self.send_envelope(404, "%s not found: %s" % (level, "/".join(uids)))
            return 404
        failure = cfg.get("operation_error") if level != "Instance" else None
        if not failure:
            plural = {"Study": "studies", "Series": "series", "Instance": "instances"}[level]
            gone = [uids[-1]]
            if level != "Instance" and st.gcs is not None:
                _, found = self.orthanc_json("GET", "/%s/%s/instances" % (plural, oid))
                gone = [x["MainDicomTags"].get("SOPInstanceUID") for x in found or []
                        if isinstance(x, dict) and isinstance(x.get("MainDicomTags"), dict)]
            status, _ = self.orthanc_json("DELETE", "/%s/%s" % (plural, oid))
            if status != 200:
                self.send_envelope(500, "Orthanc answered %d to the delete" % status)
                return 500
            st.bump("deleted", level.lower())
            # Gone from the one Orthanc: gone from every store that held it.
            admin.drop_holdings(st, gone)
        if level == "Instance":
            self.send_json(200, {})
            return 200
        with st.lock:
            name = admin.new_operation(st, parent.split("/dicomStores/")[0],
                                       "dicomweb.DicomWebService." + DELETE_METHODS[level],
                                       cfg["operation_polls"], failure)
        self.send_json(200, {"name": name})
        return 200


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def set_metadata(self, enabled):
        meta = getattr(self, "meta", None)
        if meta is not None:
            meta.switch(enabled)


class MetadataHandler(Handler):
    metadata_only = True


class AwsMetadataHandler(Handler):
    aws_metadata_only = True


class MetadataListener:
    """A second port that serves only the metadata paths and can be closed
    (connection refused) and reopened, for 'no metadata server' tests."""

    def __init__(self, main, port, handler=MetadataHandler):
        self.main, self.port, self.srv, self.lock = main, port, None, threading.Lock()
        self.handler = handler
        self.switch(True)

    def switch(self, enabled):
        with self.lock:
            if enabled and self.srv is None:
                srv = Server(("127.0.0.1", self.port), self.handler)
                srv.state, srv.url, srv.public_url, srv.args = \
                    self.main.state, self.main.url, self.main.public_url, self.main.args
                srv.meta = None
                self.port = srv.server_address[1]
                threading.Thread(target=srv.serve_forever, daemon=True).start()
                self.srv = srv
            elif not enabled and self.srv is not None:
                self.srv.shutdown()
                self.srv.server_close()
                self.srv = None


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=0, help="0 = a free port")
    p.add_argument("--orthanc", required=True, help="Orthanc root URL, e.g. http://127.0.0.1:8042")
    p.add_argument("--orthanc-auth", metavar="USER:PASSWORD", help="Basic auth for Orthanc")
    p.add_argument("--store", action="append", default=[],
                   help="a dicomStore name it knows (repeatable)")
    p.add_argument("--token", default="static-test-token", help="a bearer token always accepted")
    p.add_argument("--api-key", default="test-api-key", help="an API key always accepted")
    p.add_argument("--metadata-port", type=int, default=None,
                   help="also serve the metadata server alone on this port (0 = free one)")
    p.add_argument("--aws-metadata-port", type=int, default=None,
                   help="also serve an EC2 instance metadata service on this port (0 = free one)")
    p.add_argument("--public-url", help="base of RetrieveURLs (default: this server's URL)")
    p.add_argument("--tmp", default=os.environ.get("HC_TEST_TMP"), help="where bodies are spooled")
    p.add_argument("--gcs-root", metavar="DIR",
                   help="a directory standing for Cloud Storage (gs://bucket/x is DIR/bucket/x): "
                        "DICOM import, export and de-identification then do their work")
    args = p.parse_args()
    if not args.store:
        args.store = ["projects/test-project/locations/us-central1/datasets/test-dataset/"
                      "dicomStores/test-store"]

    srv = Server(("127.0.0.1", args.port), Handler)
    srv.args = args
    srv.url = "http://127.0.0.1:%d" % srv.server_address[1]
    srv.public_url = (args.public_url or srv.url).rstrip("/")
    srv.state = State(args)
    srv.meta = None
    info = {"url": srv.url, "stores": args.store}
    if srv.state.gcs is not None:
        info["gcs_root"] = srv.state.gcs.path
    if args.metadata_port is not None:
        srv.meta = MetadataListener(srv, args.metadata_port)
        info["metadata_host"] = "127.0.0.1:%d" % srv.meta.port
    if args.aws_metadata_port is not None:
        srv.aws_meta = MetadataListener(srv, args.aws_metadata_port, AwsMetadataHandler)
        info["aws_metadata"] = "http://127.0.0.1:%d" % srv.aws_meta.port
    sys.stdout.write(srv.url + "\n" + json.dumps(info) + "\n")
    sys.stdout.flush()
    log("listening on %s, forwarding to %s" % (srv.url, args.orthanc))
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    import signal
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    main()
