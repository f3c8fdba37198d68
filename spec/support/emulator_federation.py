# SPDX-License-Identifier: MIT
"""Credentials without key files, for emulator.py: what Google (and AWS) answer when a workload
signs in by impersonation or workload identity federation.

- Google's STS token exchange (sts.googleapis.com `POST /v1/token`, RFC 8693): grant type,
  requested token type, audience (a workload or workforce pool provider registered by the
  test), subject token type, the subject token (one the test registered, or for the AWS type a
  serialized GetCallerIdentity request whose SigV4 signature botocore recomputes, with the
  access key and secret the test registered), scope, `options` ({"userProject"}), client
  authentication when the provider has a client; answers {access_token, issued_token_type,
  token_type, expires_in}; errors {"error", "error_description"} with 400 (401 invalid_client).
- STS's refresh of `external_account_authorized_user` credentials (`POST /v1/oauthtoken`,
  grant_type=refresh_token with the client's id and secret in Basic auth).
- IAM Credentials `POST /v1/projects/-/serviceAccounts/{email}:generateAccessToken`: the bearer
  token's principal must be allowed to impersonate the first account of the chain (delegates,
  then the target), each account the next; scope non-empty; lifetime at most 3600 s (43200 s for
  an account registered with lifetime_extension); answers {accessToken, expireTime}; errors in
  Google's envelope (403 PERMISSION_DENIED when a link of the chain is not allowed).
- An EC2 instance metadata service (IMDSv2) on a port of its own: `PUT /latest/api/token`, the
  availability zone, the instance role and its credentials, each GET needing the session token
  unless IMDSv2 is "optional"; "down" answers 401 to everything.

Every token issued carries a principal (who it stands for): serviceAccount:EMAIL for a key or an
impersonation, user:EMAIL (or user:CLIENT_ID) for a refresh token, principal://iam.googleapis.com/
<pool>/subject/<subject> for a federated one. Nothing secret is logged or kept in stats: subject
tokens appear as their SHA-256.

`FederationMixin` is mixed into emulator.py's request handler, whose plumbing it uses
(body_bytes, send, send_json, send_envelope, authenticate, apply_fault); the state lives in its
State (one lock).
"""

import base64
import binascii
import calendar
import hashlib
import hmac
import json
import re
import secrets
import time
import urllib.parse

import sigv4_botocore

SCOPE_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
SCOPE_IAM = "https://www.googleapis.com/auth/iam"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
AWS_TOKEN_TYPE = "urn:ietf:params:aws:token-type:aws4_request"
# Subject token types STS knows, and which a provider of each kind takes.
TOKEN_TYPES = {
    "urn:ietf:params:oauth:token-type:jwt": "oidc",
    "urn:ietf:params:oauth:token-type:id_token": "oidc",
    "urn:ietf:params:oauth:token-type:saml2": "saml",
    AWS_TOKEN_TYPE: "aws",
}
WORKLOAD_AUDIENCE = re.compile(
    r"^//iam\.googleapis\.com/projects/[^/]+/locations/global/workloadIdentityPools/[^/]+"
    r"/providers/[^/]+$")
WORKFORCE_AUDIENCE = re.compile(
    r"^//iam\.googleapis\.com/locations/global/workforcePools/[^/]+/providers/[^/]+$")
SA_NAME = re.compile(r"^projects/-/serviceAccounts/([^/]+)$")
IAM_ROUTE = re.compile(r"^/v1/projects/([^/]+)/serviceAccounts/([^/:]+):generateAccessToken$")
AWS_AUTH = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=([^/,\s]+)/(\d{8})/([^/,\s]+)/([^/,\s]+)/aws4_request,\s*"
    r"SignedHeaders=([^,\s]+),\s*Signature=([0-9a-f]{64})$")
AWS_STS_HOST = re.compile(r"^sts(?:\.([a-z0-9-]+))?\.amazonaws\.com$")
AWS_SKEW = 15 * 60   # seconds AWS allows between x-amz-date and its clock

# Google's words (STS, as its error answers read; IAM, as the IAM Credentials API answers).
MSG_AUDIENCE = ('Invalid value for "audience". This value should be the full resource name of '
                'the Identity Provider. See https://cloud.google.com/iam/docs/reference/sts/rest/'
                'v1/TopLevel/token for the list of possible formats.')
MSG_TARGET = ('The target service indicated by the "audience" parameters is invalid. This might '
              'either be because the pool or provider is disabled or deleted or because it '
              "doesn't exist.")
MSG_DENIED = ("Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may not "
              "exist).")
MSG_SIGNATURE = ("The request signature we calculated does not match the signature you provided. "
                 "Check your AWS Secret Access Key and signing method. Consult the service "
                 "documentation for details.")
MSG_AWS_TOKEN = "The security token included in the request is invalid."

DEFAULT_CONFIG = {
    "aws_zone": "us-east-1a",      # the instance's availability zone (its region: less the letter)
    "aws_imdsv2": "required",      # "required" | "optional" (IMDSv1 too) | "down" (401 to all)
}
# Set by emulator.py: its credential messages (the same text every Google API answers with).
MESSAGES = {"missing": "missing credential", "invalid": "invalid credential"}


def sha256_hex(s):
    return hashlib.sha256(s.encode("utf-8", "surrogateescape")).hexdigest()


def init_state(st):
    """Adds what this module keeps to emulator.py's State (called under no lock, at reset)."""
    st.audiences = {}          # audience -> {kind, client_id, client_secret, user_project}
    st.subject_tokens = {}     # token -> {audience, type, subject, expiry}
    st.service_accounts = {}   # email -> {impersonators: set, lifetime_extension: bool}
    st.workforce_users = {}    # refresh token -> {client_id, client_secret, audience, ...}
    st.aws_credentials = {}    # access key id -> {secret, token, arn, role}
    st.aws_role = None         # the instance role the metadata service names
    st.imds_tokens = {}        # IMDSv2 session token -> expiry
    st.stats.update({
        "sts_requests": {}, "sts_errors": {}, "sts_log": [], "impersonations": {},
        "impersonation_log": [], "aws_metadata_requests": {}, "aws_caller_identity": {},
    })


def federated_principal(audience, subject):
    """principal://iam.googleapis.com/<pool>/subject/<subject>, as IAM names a federated one."""
    pool = re.sub(r"/providers/[^/]+$", "", audience[len("//iam.googleapis.com/"):])
    return "principal://iam.googleapis.com/%s/subject/%s" % (pool, subject)


def rfc3339(t):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def listed(arg):
    return arg if isinstance(arg, list) else [arg]


def basic_auth(header):
    """(client_id, client_secret) of an Authorization: Basic header, or None."""
    if not header or header[:6].lower() != "basic ":
        return None
    try:
        raw = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    cid, sep, secret = raw.partition(":")
    return (urllib.parse.unquote(cid), urllib.parse.unquote(secret)) if sep else None


class Refused(Exception):
    """An STS refusal: status, OAuth error code, description."""

    def __init__(self, status, error, description):
        super().__init__(description)
        self.status, self.error, self.description = status, error, description


# ---------------------------------------------------------------- GetCallerIdentity

def verify_caller_identity(st, token, audience):
    """Checks a serialized, signed AWS GetCallerIdentity request (the aws subject token) the way
    STS and AWS would: its shape, the target resource, the access key and session token, the date,
    and the SigV4 signature recomputed by botocore. Returns the caller's ARN, or raises Refused."""
    def malformed(why):
        return Refused(400, "invalid_grant", "The subject token is not a valid serialized AWS "
                       "GetCallerIdentity request: %s." % why)

    def aws(code, message):
        with st.lock:
            st.stats["aws_caller_identity"][code] = st.stats["aws_caller_identity"].get(code, 0) + 1
        return Refused(400, "invalid_grant", "Received invalid AWS response of type %s with "
                       "error message: %s" % (code, message))

    try:
        req = json.loads(urllib.parse.unquote(token))
    except ValueError:
        raise malformed("not URL-encoded JSON") from None
    if not isinstance(req, dict) or not isinstance(req.get("url"), str) or \
            not isinstance(req.get("headers"), list):
        raise malformed("it needs url, method and headers")
    if req.get("method") != "POST":
        raise malformed("the method must be POST")
    url = urllib.parse.urlsplit(req["url"])
    m = AWS_STS_HOST.match(url.hostname or "")
    if url.scheme != "https" or not m or url.path not in ("", "/") or url.port is not None:
        raise malformed("the url must be https://sts.<region>.amazonaws.com")
    url_region = m.group(1) or "us-east-1"
    pairs = sigv4_botocore.split_query(url.query)
    if ("Action", "GetCallerIdentity") not in pairs or ("Version", "2011-06-15") not in pairs:
        raise malformed("the url must ask Action=GetCallerIdentity&Version=2011-06-15")
    headers = {}
    for h in req["headers"]:
        if not isinstance(h, dict) or not isinstance(h.get("key"), str) or \
                not isinstance(h.get("value"), str):
            raise malformed("each header must be {key, value} strings")
        headers.setdefault(h["key"].lower(), []).append(h["value"])

    def one(name):
        v = headers.get(name)
        return v[0] if v and len(v) == 1 else None

    target = one("x-goog-cloud-target-resource")
    if target not in (audience, "https:" + audience):
        raise Refused(400, "invalid_grant", "The x-goog-cloud-target-resource header of the AWS "
                      "request must be the audience %s." % audience)
    host = one("host") or url.hostname
    if host != url.hostname:
        raise malformed("its host header is not the url's host")
    auth = AWS_AUTH.match(one("authorization") or "")
    if not auth:
        raise aws("IncompleteSignature", "Authorization header requires 'Credential', "
                  "'SignedHeaders' and 'Signature' parameters (AWS4-HMAC-SHA256).")
    key_id, day, region, service, signed, signature = auth.groups()
    with st.lock:
        cred = dict(st.aws_credentials.get(key_id) or {})
    if not cred or (cred.get("token") or None) != one("x-amz-security-token"):
        raise aws("InvalidClientTokenId", MSG_AWS_TOKEN)
    if service != "sts" or region != url_region:
        raise aws("SignatureDoesNotMatch", "Credential should be scoped to a valid region and "
                  "service: '%s/%s', not '%s/%s'." % (url_region, "sts", region, service))
    amz_date = one("x-amz-date") or ""
    try:
        signed_at = calendar.timegm(time.strptime(amz_date, "%Y%m%dT%H%M%SZ"))
    except ValueError:
        raise aws("IncompleteSignature", "Authorization header requires existence of either a "
                  "'X-Amz-Date' or a 'Date' header.") from None
    now = time.time()
    if signed_at < now - AWS_SKEW:
        raise aws("SignatureDoesNotMatch", "Signature expired: %s is now earlier than %s (%s - "
                  "15 min.)" % (amz_date, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now - AWS_SKEW)),
                                time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))))
    if signed_at > now + AWS_SKEW:
        raise aws("SignatureDoesNotMatch", "Signature not yet current: %s is still later than %s "
                  "(%s + 15 min.)" % (amz_date, time.strftime("%Y%m%dT%H%M%SZ",
                                                              time.gmtime(now + AWS_SKEW)),
                                      time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))))
    if day != amz_date[:8]:
        raise aws("SignatureDoesNotMatch", "Date in Credential scope does not match YYYYMMDD "
                  "from ISO-8601 version of date from HTTP: '%s' != '%s'." % (day, amz_date[:8]))
    names = signed.split(";")
    if "host" not in names:
        raise aws("SignatureDoesNotMatch", "'Host' or ':authority' must be a 'SignedHeader' in "
                  "the AWS Authorization.")
    missing = [n for n in names if n != "host" and n not in headers]
    if missing:
        raise aws("SignatureDoesNotMatch", "The signed header %s is not in the request." % missing[0])
    # botocore signs host, x-amz-date and (with a token) x-amz-security-token itself.
    given = [[n, v] for n in names if n not in ("host", "x-amz-date", "x-amz-security-token",
                                                 "authorization")
             for v in headers[n]]
    ref = sigv4_botocore.sign({
        "method": "POST", "host": host, "path": url.path or "/", "query": pairs,
        "headers": given, "payload": req.get("data") or "", "region": region,
        "service": service, "date": amz_date, "access_key": key_id, "secret": cred["secret"],
        "token": one("x-amz-security-token") if "x-amz-security-token" in names else None})
    if ref["signed_headers"] != signed or not hmac.compare_digest(ref["signature"], signature):
        raise aws("SignatureDoesNotMatch", MSG_SIGNATURE)
    with st.lock:
        st.stats["aws_caller_identity"]["ok"] = st.stats["aws_caller_identity"].get("ok", 0) + 1
    return cred["arn"]


# ---------------------------------------------------------------- the handler's part

class FederationMixin:
    aws_metadata_only = False

    def federation_route(self, path):
        """Serves the STS and IAM Credentials routes; True when path was one of them."""
        if path == "/v1/token":
            self.sts_token()
            return True
        if path == "/v1/oauthtoken":
            self.sts_refresh()
            return True
        m = IAM_ROUTE.match(path)
        if m:
            self.generate_access_token(m.group(1), urllib.parse.unquote(m.group(2)))
            return True
        return False

    # -- STS

    def sts_form(self):
        form = urllib.parse.parse_qs(self.body_bytes().decode("utf-8", "replace"),
                                     keep_blank_values=True)
        return {k: v[0] for k, v in form.items()}

    def sts_answer(self, entry, fn):
        """Runs fn (which returns the answer's JSON or raises Refused), records entry in the
        STS log with the outcome, and answers."""
        st = self.server.state
        try:
            body, status = fn(), 200
        except Refused as e:
            body, status = {"error": e.error, "error_description": e.description}, e.status
            entry["error"] = e.error
            with st.lock:
                st.stats["sts_errors"][e.error] = st.stats["sts_errors"].get(e.error, 0) + 1
        entry["status"] = status
        with st.lock:
            st.stats["sts_log"].append(entry)
            del st.stats["sts_log"][:-100]
        self.send_json(status, body)

    def sts_token(self):
        st = self.server.state
        if self.command != "POST":
            return self.send_json(405, {"error": "invalid_request",
                                        "error_description": "POST required"})
        f = self.sts_form()
        grant = f.get("grant_type", "")
        st.bump("token_requests", grant or "(none)")
        st.bump("sts_requests", f.get("subject_token_type") or "(none)")
        if self.apply_fault("sts"):
            return
        entry = {"route": "token", "grant_type": grant, "audience": f.get("audience"),
                 "scope": f.get("scope"), "requested_token_type": f.get("requested_token_type"),
                 "subject_token_type": f.get("subject_token_type"),
                 "subject_token_sha256": sha256_hex(f["subject_token"])
                 if f.get("subject_token") else None,
                 "client_auth": "basic" if basic_auth(self.headers.get("Authorization"))
                 else "body" if f.get("client_id") else "none"}
        try:
            entry["options"] = json.loads(f["options"]) if "options" in f else None
        except ValueError:
            entry["options"] = "(not JSON)"
        self.sts_answer(entry, lambda: self.sts_exchange(f, entry))

    def sts_exchange(self, f, entry):
        st = self.server.state
        if f.get("grant_type") != TOKEN_EXCHANGE:
            raise Refused(400, "unsupported_grant_type",
                          'Invalid value for "grant_type": %s' % f.get("grant_type", ""))
        if f.get("requested_token_type") != ACCESS_TOKEN_TYPE:
            raise Refused(400, "invalid_request", 'Invalid value for "requested_token_type". '
                          "Only %s is supported." % ACCESS_TOKEN_TYPE)
        audience = f.get("audience", "")
        if not (WORKLOAD_AUDIENCE.match(audience) or WORKFORCE_AUDIENCE.match(audience)):
            raise Refused(400, "invalid_request", MSG_AUDIENCE)
        with st.lock:
            provider = dict(st.audiences.get(audience) or {})
        if not provider:
            raise Refused(400, "invalid_target", MSG_TARGET)
        if provider.get("client_id"):
            client = basic_auth(self.headers.get("Authorization")) or \
                (f.get("client_id"), f.get("client_secret"))
            if client != (provider["client_id"], provider["client_secret"]):
                raise Refused(401, "invalid_client", "The OAuth client was not found or its "
                              "secret does not match.")
        token_type = f.get("subject_token_type", "")
        if token_type not in TOKEN_TYPES:
            raise Refused(400, "invalid_request", 'Invalid value for "subject_token_type". Use '
                          "one of: %s." % ", ".join(sorted(TOKEN_TYPES)))
        if provider.get("kind") and TOKEN_TYPES[token_type] != provider["kind"]:
            raise Refused(400, "invalid_request", 'Invalid value for "subject_token_type": the '
                          "provider is an %s provider, it does not take %s." % (
                              provider["kind"].upper(), token_type))
        if not f.get("subject_token"):
            raise Refused(400, "invalid_request", 'Missing required parameter: "subject_token".')
        scopes = f.get("scope", "").split()
        if not scopes:
            raise Refused(400, "invalid_scope", 'Missing required parameter: "scope".')
        options = entry.get("options")
        if options is not None and not isinstance(options, dict):
            raise Refused(400, "invalid_request", 'Invalid value for "options": it must be a JSON '
                          "object.")
        user_project = (options or {}).get("userProject")
        if provider.get("user_project") and user_project != provider["user_project"]:
            raise Refused(400, "invalid_request", 'The "userProject" option must be %s for this '
                          "workforce pool." % provider["user_project"])
        if token_type == AWS_TOKEN_TYPE:
            subject = verify_caller_identity(st, f["subject_token"], audience)
        else:
            with st.lock:
                known = dict(st.subject_tokens.get(f["subject_token"]) or {})
            if not known:
                raise Refused(400, "invalid_grant", "The subject token is not one this test "
                              "registered (unknown to the emulator).")
            if known.get("audience") not in (None, audience):
                raise Refused(400, "invalid_grant", "The audience in ID Token [%s] does not match "
                              "the expected audience %s." % (known["audience"], audience))
            if known.get("type") not in (None, token_type):
                raise Refused(400, "invalid_grant", "The subject token was issued as %s, not %s."
                              % (known["type"], token_type))
            if known["expiry"] <= time.time():
                raise Refused(400, "invalid_grant", "The subject token has expired.")
            subject = known["subject"]
        token, expires_in = st.issue_token(scopes, principal=federated_principal(audience, subject))
        return {"access_token": token, "issued_token_type": ACCESS_TOKEN_TYPE,
                "token_type": "Bearer", "expires_in": expires_in}

    def sts_refresh(self):
        st = self.server.state
        if self.command != "POST":
            return self.send_json(405, {"error": "invalid_request",
                                        "error_description": "POST required"})
        f = self.sts_form()
        grant = f.get("grant_type", "")
        st.bump("token_requests", grant or "(none)")
        st.bump("sts_requests", "oauthtoken")
        if self.apply_fault("sts"):
            return
        client = basic_auth(self.headers.get("Authorization"))
        entry = {"route": "oauthtoken", "grant_type": grant, "client_auth": "basic" if client
                 else "none", "client_id": client[0] if client else None}

        def refresh():
            if grant != "refresh_token":
                raise Refused(400, "unsupported_grant_type",
                              'Invalid value for "grant_type": %s' % grant)
            if client is None:
                raise Refused(401, "invalid_client", "The client id and secret must be sent in "
                              "an Authorization: Basic header.")
            with st.lock:
                user = dict(st.workforce_users.get(f.get("refresh_token", "")) or {})
            if user and (user["client_id"], user["client_secret"]) != client:
                raise Refused(401, "invalid_client", "The OAuth client was not found or its "
                              "secret does not match.")
            if not user:
                raise Refused(400, "invalid_grant", "The refresh token is invalid or expired.")
            scopes = f.get("scope", "").split() or user["scopes"]
            token, expires_in = st.issue_token(
                scopes, principal=federated_principal(user["audience"], user["subject"]))
            answer = {"access_token": token, "expires_in": expires_in, "token_type": "Bearer"}
            if user.get("rotate"):
                new = "rt-" + secrets.token_urlsafe(24)
                with st.lock:
                    st.workforce_users[new] = st.workforce_users.pop(f["refresh_token"])
                answer["refresh_token"] = new
            return answer

        self.sts_answer(entry, refresh)

    # -- IAM Credentials

    def iam_refuse(self, entry, status, message, outcome, details=None, status_name=None):
        st = self.server.state
        entry.update(status=status, outcome=outcome)
        st.bump("impersonations", outcome)
        with st.lock:
            st.stats["impersonation_log"].append(entry)
            del st.stats["impersonation_log"][:-100]
        self.send_envelope(status, message, details, status_name=status_name)

    def bearer_principal(self):
        """The principal of the request's bearer token (None when it stands for no one)."""
        st = self.server.state
        auth = self.headers.get("Authorization", "")
        cred = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        with st.lock:
            info = st.tokens.get(cred)
        if info is not None:
            return info.get("principal")
        if cred == self.server.args.token:
            return "user:static-token"
        if cred.count(".") == 2:   # a self-signed JWT authenticate() accepted: its issuer
            try:
                claims = json.loads(base64.urlsafe_b64decode(cred.split(".")[1] + "=="))
                return "serviceAccount:" + str(claims.get("iss"))
            except (ValueError, binascii.Error):
                return None
        return None

    def generate_access_token(self, project, email):
        st = self.server.state
        entry = {"target": email, "delegates": None, "scope": None, "lifetime": None,
                 "principal": None}
        if self.command != "POST":
            return self.iam_refuse(entry, 404, "The requested URL %s was not found on this server."
                                   % self.url.path, "not_found")
        if self.apply_fault("impersonation"):
            return None
        verdict, scopes = self.authenticate()
        if verdict != "ok":
            return self.iam_refuse(entry, 401, MESSAGES["missing" if verdict == "missing"
                                                         else "invalid"], "unauthenticated")
        if not scopes & {SCOPE_PLATFORM, SCOPE_IAM}:
            return self.iam_refuse(entry, 403, "Request had insufficient authentication scopes.",
                                   "insufficient_scope",
                                   [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                                     "reason": "ACCESS_TOKEN_SCOPE_INSUFFICIENT",
                                     "domain": "googleapis.com",
                                     "metadata": {"service": "iamcredentials.googleapis.com"}}])
        entry["principal"] = source = self.bearer_principal()
        try:
            body = json.loads(self.body_bytes() or b"{}")
        except ValueError:
            return self.iam_refuse(entry, 400, "Invalid JSON payload received.", "invalid")
        if not isinstance(body, dict):
            return self.iam_refuse(entry, 400, "Invalid JSON payload received. Expected an "
                                   "object.", "invalid")
        unknown = sorted(set(body) - {"delegates", "scope", "lifetime"})
        if unknown:
            return self.iam_refuse(entry, 400, 'Invalid JSON payload received. Unknown name "%s": '
                                   "Cannot find field." % unknown[0], "invalid")
        if project != "-":
            return self.iam_refuse(entry, 400, "The - wildcard character is required for the "
                                   "project; replacing it with a project ID is invalid.", "invalid")
        scope = body.get("scope")
        entry["scope"] = scope
        if not isinstance(scope, list) or not scope or \
                not all(isinstance(s, str) and s for s in scope):
            return self.iam_refuse(entry, 400, "Scope required: a non-empty list of OAuth scopes.",
                                   "invalid")
        lifetime = body.get("lifetime", "3600s")
        entry["lifetime"] = lifetime
        m = re.match(r"^(\d+)(?:\.\d{1,9})?s$", lifetime) if isinstance(lifetime, str) else None
        if not m:
            return self.iam_refuse(entry, 400, "Invalid value at 'lifetime' (type.googleapis.com/"
                                   "google.protobuf.Duration), Field 'lifetime', Illegal duration "
                                   "format; duration must end with 's'", "invalid")
        delegates = body.get("delegates") or []
        entry["delegates"] = delegates
        chain = []
        for d in delegates if isinstance(delegates, list) else [None]:
            dm = SA_NAME.match(d) if isinstance(d, str) else None
            if not dm:
                return self.iam_refuse(entry, 400, "Invalid form of delegate %s: use "
                                       "projects/-/serviceAccounts/EMAIL." % json.dumps(d),
                                       "invalid")
            chain.append(dm.group(1))
        chain.append(email)
        with st.lock:
            accounts = {e: st.service_accounts.get(e) for e in chain}
        target = accounts[email]
        seconds = int(m.group(1))
        longest = 43200 if target and target.get("lifetime_extension") else 3600
        if seconds < 1 or seconds > longest:
            return self.iam_refuse(entry, 400, "The lifetime requested (%ss) is outside what this "
                                   "service account may have: 1s to %ds." % (seconds, longest),
                                   "invalid")
        who = source
        for e in chain:
            account = accounts[e]
            if account is None or who is None or who not in account["impersonators"]:
                return self.iam_refuse(
                    entry, 403, MSG_DENIED, "unknown_account" if account is None else "denied",
                    [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                      "reason": "IAM_PERMISSION_DENIED", "domain": "iam.googleapis.com",
                      "metadata": {"permission": "iam.serviceAccounts.getAccessToken"}}])
            who = "serviceAccount:" + e
        with st.lock:
            cap = int(st.config["expires_in"])
        token, expires_in = st.issue_token(scope, expires_in=min(seconds, cap),
                                           principal="serviceAccount:" + email)
        entry.update(status=200, outcome="ok")
        st.bump("impersonations", "ok")
        with st.lock:
            st.stats["impersonation_log"].append(entry)
            del st.stats["impersonation_log"][:-100]
        return self.send_json(200, {"accessToken": token,
                                    "expireTime": rfc3339(time.time() + expires_in)})

    # -- the EC2 instance metadata service

    def aws_metadata(self):
        st = self.server.state
        path = self.url.path
        base = "/latest/meta-data/"
        kind = {"/latest/api/token": "token", base + "placement/availability-zone": "zone",
                base + "placement/region": "region", base + "iam/security-credentials": "role",
                base + "iam/security-credentials/": "role"}.get(path)
        if kind is None:
            kind = "credentials" if path.startswith(base + "iam/security-credentials/") else "other"
        st.bump("aws_metadata_requests", kind)
        if self.apply_fault("aws_metadata"):
            return None
        with st.lock:
            cfg = dict(st.config)
            role = st.aws_role
        mode = cfg["aws_imdsv2"]
        text = "text/plain"
        if mode == "down":
            st.bump("aws_metadata_requests", "refused")
            return self.send(401, b"", text)
        if kind == "token":
            if self.command != "PUT":
                return self.send(405, b"", text)
            if "X-Forwarded-For" in self.headers:
                return self.send(403, b"", text)
            ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
            if not re.match(r"^\d{1,5}$", ttl) or not 1 <= int(ttl) <= 21600:
                return self.send(400, b"", text)
            token = "AQAEA" + secrets.token_urlsafe(42)
            with st.lock:
                st.imds_tokens[token] = time.time() + int(ttl)
            return self.send(200, token, text, {"X-Aws-Ec2-Metadata-Token-Ttl-Seconds": ttl})
        if self.command not in ("GET", "HEAD"):
            return self.send(405, b"", text)
        given = self.headers.get("X-aws-ec2-metadata-token")
        if mode == "required" or given is not None:
            with st.lock:
                expiry = st.imds_tokens.get(given or "")
            if expiry is None or expiry <= time.time():
                st.bump("aws_metadata_requests", "refused")
                return self.send(401, b"", text)
        zone = str(cfg["aws_zone"])
        if kind == "zone":
            return self.send(200, zone, text)
        if kind == "region":
            return self.send(200, zone[:-1], text)
        if kind == "role":
            return self.send(200, role, text) if role else self.send(404, b"", text)
        if kind == "credentials" and role and path == base + "iam/security-credentials/" + role:
            with st.lock:
                cred = next((dict(c) for c in st.aws_credentials.values() if c.get("role") == role),
                            None)
            now = time.time()
            return self.send(200, json.dumps({
                "Code": "Success", "LastUpdated": rfc3339(now), "Type": "AWS-HMAC",
                "AccessKeyId": cred["access_key_id"], "SecretAccessKey": cred["secret"],
                "Token": cred.get("token") or "", "Expiration": rfc3339(now + 6 * 3600)},
                indent=2), text)
        return self.send(404, b"", text)

    # -- control

    def federation_control(self, what, arg):
        """Handles the /_control/ calls of this module; True when what was one of them."""
        st = self.server.state
        handlers = {"audiences": self.c_audiences, "subject_tokens": self.c_subject_tokens,
                    "service_accounts": self.c_service_accounts,
                    "workforce_users": self.c_workforce_users,
                    "aws_credentials": self.c_aws_credentials}
        if what not in handlers:
            return False
        items = listed(arg)
        if not all(isinstance(x, dict) for x in items):
            self.send_json(400, {"error": "%s takes an object or a list of objects" % what})
            return True
        try:
            with st.lock:
                answer = handlers[what](st, items, isinstance(arg, list))
        except (KeyError, ValueError, TypeError) as e:
            self.send_json(400, {"error": "%s: %s" % (what, e)})
            return True
        self.send_json(200, answer)
        return True

    @staticmethod
    def c_audiences(st, items, _many):
        for a in items:
            aud = a["audience"]
            if not (WORKLOAD_AUDIENCE.match(aud) or WORKFORCE_AUDIENCE.match(aud)):
                raise ValueError("not a workload or workforce pool provider: %r" % aud)
            if a.get("kind") not in (None, "oidc", "saml", "aws"):
                raise ValueError("kind must be oidc, saml or aws")
            if bool(a.get("client_id")) != bool(a.get("client_secret")):
                raise ValueError("client_id and client_secret go together")
            st.audiences[aud] = {"kind": a.get("kind"), "client_id": a.get("client_id"),
                                 "client_secret": a.get("client_secret"),
                                 "user_project": a.get("user_project")}
        return {"ok": True, "audiences": sorted(st.audiences)}

    @staticmethod
    def c_subject_tokens(st, items, many):
        made = []
        for t in items:
            token = t.get("token") or "subject-" + secrets.token_urlsafe(24)
            if t.get("subject_token_type") not in (None, *TOKEN_TYPES):
                raise ValueError("unknown subject_token_type %r" % t["subject_token_type"])
            st.subject_tokens[token] = {
                "audience": t.get("audience"), "type": t.get("subject_token_type"),
                "subject": str(t.get("subject") or "subject-" + secrets.token_hex(4)),
                "expiry": time.time() + float(t.get("expires_in", 3600))}
            made.append(token)
        return {"subject_tokens": made} if many else {"subject_token": made[0]}

    @staticmethod
    def c_service_accounts(st, items, _many):
        for a in items:
            email = a["email"]
            if not isinstance(email, str) or "@" not in email:
                raise ValueError("email must be a service account's email")
            entry = st.service_accounts.setdefault(email, {"impersonators": set(),
                                                           "lifetime_extension": False})
            entry["impersonators"].update(str(p) for p in a.get("impersonators") or [])
            if "lifetime_extension" in a:
                entry["lifetime_extension"] = bool(a["lifetime_extension"])
        return {"ok": True, "service_accounts": {
            e: {"impersonators": sorted(v["impersonators"]),
                "lifetime_extension": v["lifetime_extension"]}
            for e, v in sorted(st.service_accounts.items())}}

    @staticmethod
    def c_workforce_users(st, items, _many):
        for u in items:
            aud = u["audience"]
            if not WORKFORCE_AUDIENCE.match(aud):
                raise ValueError("audience must be a workforce pool provider: %r" % aud)
            st.workforce_users[u["refresh_token"]] = {
                "client_id": u["client_id"], "client_secret": u["client_secret"],
                "audience": aud, "subject": str(u.get("subject") or "user-" + secrets.token_hex(4)),
                "scopes": u.get("scopes") or [SCOPE_PLATFORM], "rotate": bool(u.get("rotate"))}
        return {"ok": True}

    @staticmethod
    def c_aws_credentials(st, items, _many):
        for c in items:
            key = c["access_key_id"]
            role = c.get("role")
            st.aws_credentials[key] = {
                "access_key_id": key, "secret": c["secret_access_key"],
                "token": c.get("session_token"), "role": role,
                "arn": c.get("arn") or "arn:aws:sts::123456789012:assumed-role/%s/i-0123456789abcdef0"
                % (role or "test-role")}
            if role:
                st.aws_role = role
        return {"ok": True, "access_key_ids": sorted(st.aws_credentials), "role": st.aws_role}
