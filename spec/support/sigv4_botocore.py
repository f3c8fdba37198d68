#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""AWS Signature Version 4 as botocore computes it: the reference the C signer
(src/hc_sigv4.c) is held to, and the emulator's check of a signed
GetCallerIdentity request. Only botocore's own SigV4Auth does the work here
(Debian's python3-botocore); this file only feeds it a request.

As a program it reads one JSON request per line on stdin and writes one JSON
answer per line on stdout:

  {"method", "host", "path", "query": [[name, value], ...] (decoded) or
   "raw_query": "a=b&c" (as in a URL, used as it is), "headers": [[name, value], ...],
   "payload": text, "region", "service", "date": "20150830T123600Z",
   "access_key", "secret", "token"?}
  -> {"canonical_request", "string_to_sign", "signature", "authorization",
      "signed_headers"}
"""

import json
import sys
import urllib.parse

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials


def sign(req):
    """botocore's SigV4 of one request (a dict as in the module's doc)."""
    url = "https://%s%s" % (req["host"], req.get("path") or "/")
    if req.get("raw_query"):
        url += "?" + req["raw_query"]
    request = AWSRequest(method=req["method"], url=url,
                         data=req.get("payload", "").encode("utf-8"))
    # botocore signs the host it reads from the URL unless a Host header is given.
    request.headers["host"] = req["host"]
    for name, value in req.get("headers") or []:
        request.headers[name] = value        # appends: repeated names stay repeated
    if req.get("query"):
        request.params = [(k, v) for k, v in req["query"]]
    auth = SigV4Auth(Credentials(req["access_key"], req["secret"], req.get("token")),
                     req["service"], req["region"])
    request.context["timestamp"] = req["date"]
    # What add_auth does, with the date given instead of now.
    auth._modify_request_before_signing(request)
    canonical = auth.canonical_request(request)
    to_sign = auth.string_to_sign(request, canonical)
    signature = auth.signature(to_sign, request)
    signed = auth.signed_headers(auth.headers_to_sign(request))
    auth._inject_signature_to_request(request, signature)
    return {"canonical_request": canonical, "string_to_sign": to_sign, "signature": signature,
            "authorization": request.headers["Authorization"], "signed_headers": signed}


def split_query(raw):
    """[(name, value)] of a URL's query, %XX decoded, '+' kept as it is (SigV4 reads the
    query that way; urllib's parse_qsl would make it a space), empty parts skipped (as Google's
    libraries and src/hc_sigv4.c read a query)."""
    pairs = []
    for part in raw.split("&") if raw else []:
        if not part:
            continue
        name, _, value = part.partition("=")
        pairs.append((urllib.parse.unquote(name), urllib.parse.unquote(value)))
    return pairs


def main():
    for line in sys.stdin:
        if line.strip():
            sys.stdout.write(json.dumps(sign(json.loads(line))) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
