# SPDX-License-Identifier: MIT
"""FHIR and HL7v2 resources of the emulator: what Google's FHIR and HL7v2 stores answer, kept in
memory (stores themselves are emulator_admin.py's: create them through the admin API first).

FHIR (R4, application/fhir+json): create (201, Location .../fhir/{type}/{id}/_history/{vid}),
read, update, delete, search (a searchset Bundle with fullUrl, total and paging links: _count
and _page_token), Patient/{id}/$everything (paged the same way), executeBundle (batch and
transaction, urn:uuid references resolved in a transaction) and metadata. Errors are
OperationOutcomes, as Google's FHIR answers are.

HL7v2: messages.create, messages.ingest (with an ACK), messages.get, messages.list (pageSize,
pageToken; view BASIC by default: names only) and messages.delete; sendFacility, messageType and
sendTime are read from the MSH segment.

`FhirMixin` is mixed into emulator.py's request handler (its send, send_json, send_envelope,
authorize, record, body_bytes, query, server.state and server.public_url) and hooked into its
routing by one call: fhir_route(path) answers a FHIR or HL7v2 path and returns True, or False.
"""
import base64
import datetime
import json
import re
import threading
import uuid

FHIR_RE = re.compile(r"^/v1/(projects/[^/]+/locations/[^/]+/datasets/[^/]+/fhirStores/[^/]+)/fhir"
                     r"(/.*)?$")
HL7_RE = re.compile(r"^/v1/(projects/[^/]+/locations/[^/]+/datasets/[^/]+/hl7V2Stores/[^/]+)"
                    r"/messages(:ingest|/[^/]+)?/?$")
FHIR_JSON = "application/fhir+json; charset=utf-8"
DEFAULT_COUNT = 100

_lock = threading.Lock()


def now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


def outcome(code, text):
    return {"resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": code, "diagnostics": text}]}


def resources(st):
    """The FHIR resources of every store: {store: {(type, id): resource}}; and HL7v2 messages."""
    with _lock:
        if not hasattr(st, "fhir_resources"):
            st.fhir_resources, st.hl7_messages = {}, {}
        return st.fhir_resources, st.hl7_messages


def parse_msh(data):
    """sendFacility, sendTime and messageType of an HL7v2 message (its MSH segment), or None."""
    text = data.decode("latin-1")
    seg = text.replace("\n", "\r").split("\r")[0]
    if not seg.startswith("MSH") or len(seg) < 8:
        return None
    sep = seg[3]
    f = seg.split(sep)
    # MSH-1 is the separator itself: f[1] is MSH-2, so MSH-n is f[n - 1].
    def field(n):
        return f[n - 1] if len(f) >= n else ""
    kind = field(9).split(f[1][0] if f[1] else "^")[0]
    t = field(7)
    send_time = ""
    if re.match(r"^\d{14}", t):
        send_time = "%s-%s-%sT%s:%s:%sZ" % (t[0:4], t[4:6], t[6:8], t[8:10], t[10:12], t[12:14])
    return {"sendFacility": field(4), "sendTime": send_time, "messageType": kind,
            "control_id": field(10)}


class FhirMixin:
    def fhir_route(self, path):
        m = FHIR_RE.match(path)
        if m:
            self.fhir(m.group(1), m.group(2) or "")
            return True
        m = HL7_RE.match(path)
        if m:
            self.hl7v2(m.group(1), m.group(2) or "")
            return True
        return False

    # -- shared

    def store_of(self, name, kind, what):
        """The config when the credential may use the API and the store exists; else answers."""
        cfg = self.authorize()
        if cfg is None:
            return None
        st = self.server.state
        with st.lock:
            known = st.stores.get(name, {}).get("kind") == kind
        if not known:
            self.record(404)
            self.send_envelope(404, "%s not found: %s" % (what, name))
            return None
        status = self.apply_fault("store", name)
        if status:
            self.record(status)
            return None
        return cfg

    def json_body(self):
        try:
            doc = json.loads(self.body_bytes(cap=16 << 20) or b"null")
        except ValueError:
            return None
        return doc

    def fhir_send(self, status, doc, headers=None):
        self.record(status)
        self.send(status, json.dumps(doc).encode(), FHIR_JSON, headers)

    # -- FHIR

    def fhir(self, store, rest):
        if self.store_of(store, "fhirStores", "FHIR store") is None:
            return
        root = "%s/v1/%s/fhir" % (self.server.public_url, store)
        all_res, _ = resources(self.server.state)
        with _lock:
            res = all_res.setdefault(store, {})
        seg = [s for s in rest.split("/") if s]
        verb = self.command
        if not seg:
            if verb == "POST":
                return self.fhir_bundle(res, root)
            return self.fhir_send(405, outcome("not-supported", "%s on the FHIR root" % verb))
        if seg == ["metadata"] and verb == "GET":
            return self.fhir_send(200, {"resourceType": "CapabilityStatement", "status": "active",
                                        "fhirVersion": "4.0.1", "kind": "instance"})
        rtype = seg[0]
        if not re.match(r"^[A-Z][A-Za-z]+$", rtype):
            return self.fhir_send(404, outcome("not-found", "unknown resource type %s" % rtype))
        if len(seg) == 1 and verb == "POST":
            return self.fhir_create(res, root, rtype, self.json_body())
        if len(seg) == 1 and verb == "GET":
            return self.fhir_search(res, root, rtype)
        if len(seg) == 3 and seg[2] == "$everything" and verb == "GET":
            return self.fhir_everything(res, root, rtype, seg[1])
        if len(seg) == 2 and verb == "GET":
            r = res.get((rtype, seg[1]))
            if r is None:
                return self.fhir_send(404, outcome("not-found", "resource not found: %s/%s"
                                                   % (rtype, seg[1])))
            return self.fhir_send(200, r)
        if len(seg) == 2 and verb == "PUT":
            return self.fhir_update(res, root, rtype, seg[1], self.json_body())
        if len(seg) == 2 and verb == "DELETE":
            with _lock:
                res.pop((rtype, seg[1]), None)
            return self.fhir_send(200, {})
        return self.fhir_send(405, outcome("not-supported", "%s %s" % (verb, rest)))

    def fhir_store_resource(self, res, rtype, rid, doc):
        with _lock:
            old = res.get((rtype, rid))
            version = int(old["meta"]["versionId"]) + 1 if old else 1
            doc = dict(doc)
            doc["id"] = rid
            doc["meta"] = {"versionId": str(version), "lastUpdated": now()}
            res[(rtype, rid)] = doc
        return doc, old is None

    def fhir_check(self, rtype, doc):
        if not isinstance(doc, dict) or doc.get("resourceType") != rtype:
            self.fhir_send(400, outcome("invalid", "the body must be a %s resource" % rtype))
            return False
        return True

    def fhir_create(self, res, root, rtype, doc):
        if not self.fhir_check(rtype, doc):
            return
        doc, _ = self.fhir_store_resource(res, rtype, str(uuid.uuid4()), doc)
        loc = "%s/%s/%s/_history/%s" % (root, rtype, doc["id"], doc["meta"]["versionId"])
        return self.fhir_send(201, doc, {"Location": loc})

    def fhir_update(self, res, root, rtype, rid, doc):
        if not self.fhir_check(rtype, doc):
            return
        if doc.get("id") != rid:
            return self.fhir_send(400, outcome("invalid", "the resource's id is not the URL's"))
        doc, created = self.fhir_store_resource(res, rtype, rid, doc)
        loc = "%s/%s/%s/_history/%s" % (root, rtype, rid, doc["meta"]["versionId"])
        return self.fhir_send(201 if created else 200, doc, {"Location": loc})

    @staticmethod
    def fhir_matches(r, params):
        for name, values in params.items():
            value = values[-1]
            if name == "_id":
                if r.get("id") != value:
                    return False
            elif name in ("subject", "patient"):
                ref = (r.get("subject") or r.get("patient") or {}).get("reference", "")
                if ref != value and ref.split("/")[-1] != value:
                    return False
            elif value.lower() not in json.dumps(r.get(name, "")).lower():
                return False
        return True

    def fhir_page(self, root, path, found):
        """A searchset Bundle of one page of `found`, with self and next links on root + path."""
        q = {k: v for k, v in self.query.items()}
        try:
            count = int((q.pop("_count", None) or [DEFAULT_COUNT])[-1])
            start = int((q.pop("_page_token", None) or ["0"])[-1])
        except ValueError:
            return self.fhir_send(400, outcome("invalid", "_count and _page_token are numbers"))
        keep = "&".join("%s=%s" % (k, v[-1]) for k, v in sorted(q.items()))
        page = found[start:start + count]

        def url(offset):
            args = [a for a in (keep, "_count=%d" % count) if a]
            if offset:
                args.append("_page_token=%d" % offset)
            return "%s%s?%s" % (root, path, "&".join(args))
        links = [{"relation": "search", "url": url(0)}, {"relation": "self", "url": url(start)}]
        if start + count < len(found):
            links.append({"relation": "next", "url": url(start + count)})
        bundle = {"resourceType": "Bundle", "type": "searchset", "total": len(found),
                  "link": links,
                  "entry": [{"fullUrl": "%s/%s/%s" % (root, r["resourceType"], r["id"]),
                             "resource": r, "search": {"mode": "match"}} for r in page]}
        return self.fhir_send(200, bundle)

    def fhir_search(self, res, root, rtype):
        params = {k: v for k, v in self.query.items() if k not in ("_count", "_page_token")}
        with _lock:
            found = [r for (t, _), r in sorted(res.items(), key=lambda kv: kv[1]["meta"]["lastUpdated"])
                     if t == rtype and self.fhir_matches(r, params)]
        return self.fhir_page(root, "/" + rtype + "/", found)

    def fhir_everything(self, res, root, rtype, rid):
        if rtype != "Patient":
            return self.fhir_send(400, outcome("not-supported", "$everything is Patient's"))
        with _lock:
            patient = res.get(("Patient", rid))
            others = [r for (t, _), r in sorted(res.items(), key=lambda kv: kv[1]["meta"]["lastUpdated"])
                      if t != "Patient" and self.fhir_matches(r, {"subject": ["Patient/" + rid]})]
        if patient is None:
            return self.fhir_send(404, outcome("not-found", "resource not found: Patient/%s" % rid))
        return self.fhir_page(root, "/Patient/%s/$everything" % rid, [patient] + others)

    def fhir_bundle(self, res, root):
        doc = self.json_body()
        if not isinstance(doc, dict) or doc.get("resourceType") != "Bundle" \
                or doc.get("type") not in ("batch", "transaction"):
            return self.fhir_send(400, outcome("invalid", "executeBundle takes a batch or "
                                               "transaction Bundle"))
        kind = doc["type"]
        entries = doc.get("entry") or []
        # A transaction's urn:uuid references point at the resources it creates.
        ids = {}
        for e in entries:
            req = e.get("request") or {}
            if req.get("method") == "POST" and str(e.get("fullUrl", "")).startswith("urn:uuid:"):
                ids[e["fullUrl"]] = "%s/%s" % (req.get("url", "").strip("/"), str(uuid.uuid4()))
        out = []
        for e in entries:
            req, r = e.get("request") or {}, e.get("resource")
            if kind == "transaction" and ids:
                text = json.dumps(r)
                for urn, ref in ids.items():
                    text = text.replace('"%s"' % urn, '"%s"' % ref)
                r = json.loads(text)
            method, url = req.get("method"), str(req.get("url", "")).strip("/")
            if method == "POST" and isinstance(r, dict) and r.get("resourceType") == url:
                rid = ids.get(e.get("fullUrl"), "/" + str(uuid.uuid4())).split("/")[-1]
                stored, _ = self.fhir_store_resource(res, url, rid, r)
                out.append({"fullUrl": "%s/%s/%s" % (root, url, rid), "resource": stored,
                            "response": {"status": "201 Created", "location": "%s/%s/%s/_history/1"
                                         % (root, url, rid), "etag": 'W/"1"'}})
            elif method == "GET" and "/" in url:
                t, rid = url.split("/", 1)
                got = res.get((t, rid))
                if got is None:
                    out.append({"response": {"status": "404 Not Found",
                                             "outcome": outcome("not-found", url)}})
                else:
                    out.append({"fullUrl": "%s/%s" % (root, url), "resource": got,
                                "response": {"status": "200 OK"}})
            else:
                if kind == "transaction":
                    return self.fhir_send(400, outcome("not-supported", "entry %s %s"
                                                       % (method, url)))
                out.append({"response": {"status": "400 Bad Request",
                                         "outcome": outcome("not-supported", url)}})
        return self.fhir_send(200, {"resourceType": "Bundle", "type": kind + "-response",
                                    "entry": out})

    # -- HL7v2

    def hl7v2(self, store, rest):
        if self.store_of(store, "hl7V2Stores", "HL7v2 store") is None:
            return
        _, all_msgs = resources(self.server.state)
        with _lock:
            msgs = all_msgs.setdefault(store, {})
        verb = self.command
        if rest in ("", ":ingest") and verb == "POST":
            return self.hl7_create(store, msgs, rest == ":ingest")
        if rest == "" and verb == "GET":
            return self.hl7_list(msgs)
        if rest.startswith("/") and verb in ("GET", "DELETE"):
            name = "%s/messages/%s" % (store, rest[1:])
            with _lock:
                msg = msgs.get(name)
                if msg is not None and verb == "DELETE":
                    del msgs[name]
            if msg is None:
                self.record(404)
                return self.send_envelope(404, "message not found: %s" % name)
            self.record(200)
            return self.send_json(200, {} if verb == "DELETE" else msg)
        self.record(405)
        return self.send_envelope(405, "%s is not a method of HL7v2 messages here" % verb)

    def hl7_create(self, store, msgs, ingest):
        doc = self.json_body()
        data = None
        try:
            data = base64.b64decode(doc["message"]["data"], validate=True)
        except (TypeError, KeyError, ValueError):
            pass
        msh = data is not None and parse_msh(data)
        if not msh:
            self.record(400)
            return self.send_envelope(400, "message.data must be a base64 HL7v2 message that "
                                      "starts with an MSH segment")
        name = "%s/messages/%s" % (store, base64.urlsafe_b64encode(uuid.uuid4().bytes)
                                   .decode().rstrip("="))
        msg = {"name": name, "data": doc["message"]["data"], "createTime": now(),
               "sendFacility": msh["sendFacility"], "sendTime": msh["sendTime"],
               "messageType": msh["messageType"], "labels": doc["message"].get("labels") or {}}
        with _lock:
            msgs[name] = msg
        self.record(200)
        if not ingest:
            return self.send_json(200, msg)
        ack = "MSH|^~\\&|||||%s||ACK|%s|P|2.5\rMSA|AA|%s\r" % (
            datetime.datetime.utcnow().strftime("%Y%m%d%H%M%S"), uuid.uuid4().hex[:10],
            msh["control_id"])
        return self.send_json(200, {"hl7Ack": base64.b64encode(ack.encode()).decode(),
                                    "message": msg})

    def hl7_list(self, msgs):
        try:
            size = int((self.query.get("pageSize") or ["100"])[-1])
            start = int((self.query.get("pageToken") or ["0"])[-1])
        except ValueError:
            self.record(400)
            return self.send_envelope(400, "pageSize and pageToken are numbers here")
        view = (self.query.get("view") or ["BASIC"])[-1]
        with _lock:
            names = sorted(msgs, key=lambda n: msgs[n]["createTime"])
            page = [msgs[n] if view == "FULL" else {"name": n} for n in names[start:start + size]]
        body = {"hl7V2Messages": page}
        if start + size < len(names):
            body["nextPageToken"] = str(start + size)
        self.record(200)
        return self.send_json(200, body)
