# SPDX-License-Identifier: MIT
"""The Cloud Healthcare API's admin surface, for emulator.py: datasets, DICOM, FHIR and HL7v2
stores (create with the id as a query parameter, get, list with opaque page tokens, patch with
updateMask, delete), IAM policies (etag checked), long-running operations (get, list, cancel;
progress metadata, a configurable number of polls, a final error when asked) and locations,
answered the way Google answers them, errors in Google's envelope.

Without a Cloud Storage directory (emulator.py --gcs-root) nothing here moves data:
import/export/de-identify answer an operation whose counter moves with the polls. With one, the
DICOM store import/export and the de-identifications do their work for real, a step at each poll
(emulator_gcs.py). Resources are made at once, at the request: the operation only reports. Every
DICOM store, however made, forwards its DICOMweb to the one Orthanc (emulator.py), so stores share
their instances; what a store holds for export and de-identify is what was stored through it.

`AdminMixin` is mixed into emulator.py's request handler, whose plumbing it uses (authorize,
record, send_envelope, body_chunks, apply_fault); the state lives in its State (one lock).
"""

import base64
import binascii
import copy
import json
import re
import secrets
import time
import unicodedata
import urllib.parse

import emulator_gcs as gcs
from emulator_gcs import shown

TYPE = "type.googleapis.com/"
HC = "google.cloud.healthcare.v1."
P = "projects.locations."
DS = P + "datasets."

# Top-level fields of the schemas the emulator reads, as @googleapis/healthcare 26.0.0 states
# them (the package lua/healthcare/api/v1.lua is generated from; GET /_control/methods shows
# them, and spec 16 compares them with that table). Unknown names are refused as Google does.
FIELDS = {
    "Dataset": ["encryptionSpec", "name", "satisfiesPzi", "satisfiesPzs", "timeZone"],
    "DicomStore": ["labels", "name", "notificationConfig", "streamConfigs"],
    "FhirStore": ["bulkExportGcsDestination", "complexDataTypeReferenceParsing",
                  "consentConfig", "defaultSearchHandlingStrict", "disableReferentialIntegrity",
                  "disableResourceVersioning", "enableUpdateCreate", "labels", "name",
                  "notificationConfig", "notificationConfigs", "streamConfigs",
                  "validationConfig", "version"],
    "Hl7V2Store": ["labels", "name", "notificationConfigs", "parserConfig",
                   "rejectDuplicateMessage"],
    "SetIamPolicyRequest": ["policy", "updateMask"],
    "Policy": ["auditConfigs", "bindings", "etag", "version"],
    "TestIamPermissionsRequest": ["permissions"],
    "CancelOperationRequest": [],
    "ImportDicomDataRequest": ["blobStorageSettings", "gcsSource"],
    "ExportDicomDataRequest": ["bigqueryDestination", "gcsDestination"],
    "DeidentifyDicomStoreRequest": ["config", "destinationStore", "filterConfig", "gcsConfigUri"],
    "DeidentifyDatasetRequest": ["config", "destinationDataset", "gcsConfigUri"],
    "ImportResourcesRequest": ["contentStructure", "gcsSource"],
    "ExportResourcesRequest": ["bigqueryDestination", "gcsDestination", "_since", "_type"],
    "DeidentifyFhirStoreRequest": ["config", "destinationStore", "gcsConfigUri",
                                   "resourceFilter", "skipModifiedResources"],
    "RollbackFhirResourcesRequest": ["changeType", "excludeRollbacks", "filteringFields",
                                     "force", "inputGcsObject", "resultGcsBucket",
                                     "rollbackTime", "type"],
    "ImportMessagesRequest": ["gcsSource"],
    "ExportMessagesRequest": ["endTime", "filter", "gcsDestination", "pubsubDestination",
                              "startTime"],
    "RollbackHl7V2MessagesRequest": ["changeType", "excludeRollbacks", "filteringFields",
                                     "force", "inputGcsObject", "resultGcsBucket",
                                     "rollbackTime"],
}

# The three kinds of store: what differs between them.
KINDS = {
    "dicomStores": {"schema": "DicomStore", "id": "dicomStoreId", "what": "DICOM store",
                    "immutable": ["name"]},
    "fhirStores": {"schema": "FhirStore", "id": "fhirStoreId", "what": "FHIR store",
                   "immutable": ["name", "version", "disableReferentialIntegrity",
                                 "disableResourceVersioning"]},
    "hl7V2Stores": {"schema": "Hl7V2Store", "id": "hl7V2StoreId", "what": "HL7v2 store",
                    "immutable": ["name"]},
}
DATASET_IMMUTABLE = ["name", "encryptionSpec", "satisfiesPzi", "satisfiesPzs"]
FHIR_VERSIONS = ("DSTU2", "STU3", "R4", "R5")

# Long-running methods on a store or a dataset: request schema, Google's apiMethodName and the
# done operation's response type (as Google's documentation shows them), and what the request
# must name. Whatever is made (a de-identified copy) is made at once.
LRO = {
    ("dicomStores", "import"): ("ImportDicomDataRequest", "dicom.DicomService.ImportDicomData",
                                "dicom.ImportDicomDataResponse"),
    ("dicomStores", "export"): ("ExportDicomDataRequest", "dicom.DicomService.ExportDicomData",
                                "dicom.ExportDicomDataResponse"),
    ("dicomStores", "deidentify"): ("DeidentifyDicomStoreRequest",
                                    "deidentify.DeidentifyService.DeidentifyDicomStore",
                                    "deidentify.DeidentifyDicomStoreSummary"),
    ("fhirStores", "import"): ("ImportResourcesRequest", "fhir.FhirService.ImportResources",
                               "fhir.rest.ImportResourcesResponse"),
    ("fhirStores", "export"): ("ExportResourcesRequest", "fhir.FhirService.ExportFhirData",
                               "fhir.rest.ExportResourcesResponse"),
    ("fhirStores", "deidentify"): ("DeidentifyFhirStoreRequest",
                                   "deidentify.DeidentifyService.DeidentifyFhirStore",
                                   "deidentify.DeidentifyFhirStoreSummary"),
    ("fhirStores", "rollback"): ("RollbackFhirResourcesRequest",
                                 "fhir.FhirService.RollbackFhirResources",
                                 "fhir.RollbackFhirResourcesResponse"),
    ("hl7V2Stores", "import"): ("ImportMessagesRequest", "hl7v2.Hl7V2Service.ImportMessages",
                                "hl7v2.ImportMessagesResponse"),
    ("hl7V2Stores", "export"): ("ExportMessagesRequest", "hl7v2.Hl7V2Service.ExportMessages",
                                "hl7v2.ExportMessagesResponse"),
    ("hl7V2Stores", "rollback"): ("RollbackHl7V2MessagesRequest",
                                  "hl7v2.Hl7V2Service.RollbackHl7V2Messages",
                                  "hl7v2.RollbackHl7V2MessagesResponse"),
    ("dataset", "deidentify"): ("DeidentifyDatasetRequest",
                                "dataset.DatasetService.DeidentifyDataset",
                                "dataset.DeidentifySummary"),
}

# The long-running methods done for real when the emulator has a Cloud Storage directory
# (--gcs-root); the others only report.
MIGRATIONS = {("dicomStores", "import"), ("dicomStores", "export"), ("dicomStores", "deidentify"),
              ("dataset", "deidentify")}

# Methods on these paths the emulator knows of and does not serve: 501 UNIMPLEMENTED naming
# the method, rather than a 404 that reads like a missing store.
NOT_SERVED = {
    ("dicomStores", "getDICOMStoreMetrics"): DS + "dicomStores.getDICOMStoreMetrics",
    ("dicomStores", "setBlobStorageSettings"): DS + "dicomStores.setBlobStorageSettings",
    ("fhirStores", "getFHIRStoreMetrics"): DS + "fhirStores.getFHIRStoreMetrics",
    ("fhirStores", "explainDataAccess"): DS + "fhirStores.explainDataAccess",
    ("fhirStores", "applyConsents"): DS + "fhirStores.applyConsents",
    ("fhirStores", "applyAdminConsents"): DS + "fhirStores.applyAdminConsents",
    ("hl7V2Stores", "getHL7v2StoreMetrics"): DS + "hl7V2Stores.getHL7v2StoreMetrics",
}

# Query parameters every method takes (the table's standard_params); a method's own are in
# METHODS. Any other name is refused, as Google refuses it.
STANDARD_PARAMS = {"$.xgafv", "access_token", "alt", "callback", "fields", "key", "oauth_token",
                   "prettyPrint", "quotaUser", "uploadType", "upload_protocol"}
LIST_PARAMS = {"pageSize": "int", "pageToken": "str"}
STORE_LIST_PARAMS = dict(LIST_PARAMS, filter="str")
DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 100, 1000   # the list methods' descriptions
ID_RE = re.compile(r"[\w.\-]{1,256}")          # [\p{L}\p{N}_\-\.]{1,256}: \w is letters, digits, _
ID_RULE = r"[\p{L}\p{N}_\-\.]{1,256}"
EMPTY_POLICY_ETAG = "ACAB"                     # Google's etag of a policy never set
MSG_ABORTED = ("There were concurrent policy changes. Please retry the whole read-modify-write "
               "with exponential backoff.")
MEMBER_RE = re.compile(r"^(?:allUsers|allAuthenticatedUsers|(?:user|serviceAccount|group|domain|"
                       r"deleted:user|deleted:serviceAccount|deleted:group):\S+|"
                       r"principal(?:Set)?://\S+)$")
PERMISSION_RE = re.compile(r"^[a-z][a-zA-Z0-9]*\.[a-zA-Z0-9]+\.[a-zA-Z0-9]+$")
BODY_CAP = 1 << 20
PAGE_TOKENS_KEPT = 100000                      # the oldest go first


def _method_table():
    """method id -> (shape, custom verb or None, HTTP verb, own query parameters); shape is
    what the path names (see AdminMixin.parse_admin_path)."""
    t = {
        P + "list": ("locations", None, "GET",
                     dict(LIST_PARAMS, filter="str", extraLocationTypes="repeated")),
        P + "get": ("location", None, "GET", {}),
        DS + "create": ("datasets", None, "POST", {"datasetId": "str"}),
        DS + "list": ("datasets", None, "GET", LIST_PARAMS),
        DS + "get": ("dataset", None, "GET", {}),
        DS + "patch": ("dataset", None, "PATCH", {"updateMask": "str"}),
        DS + "delete": ("dataset", None, "DELETE", {}),
        DS + "getIamPolicy": ("dataset", "getIamPolicy", "GET",
                              {"options.requestedPolicyVersion": "int"}),
        DS + "setIamPolicy": ("dataset", "setIamPolicy", "POST", {}),
        DS + "testIamPermissions": ("dataset", "testIamPermissions", "POST", {}),
        DS + "deidentify": ("dataset", "deidentify", "POST", {}),
        DS + "operations.list": ("operations", None, "GET", STORE_LIST_PARAMS),
        DS + "operations.get": ("operation", None, "GET", {}),
        DS + "operations.cancel": ("operation", "cancel", "POST", {}),
    }
    for kind, k in KINDS.items():
        m = DS + kind + "."
        t[m + "create"] = ("stores:" + kind, None, "POST", {k["id"]: "str"})
        t[m + "list"] = ("stores:" + kind, None, "GET", STORE_LIST_PARAMS)
        t[m + "get"] = ("store:" + kind, None, "GET", {})
        t[m + "patch"] = ("store:" + kind, None, "PATCH", {"updateMask": "str"})
        t[m + "delete"] = ("store:" + kind, None, "DELETE", {})
        t[m + "getIamPolicy"] = ("store:" + kind, "getIamPolicy", "GET",
                                 {"options.requestedPolicyVersion": "int"})
        t[m + "setIamPolicy"] = ("store:" + kind, "setIamPolicy", "POST", {})
        t[m + "testIamPermissions"] = ("store:" + kind, "testIamPermissions", "POST", {})
    for (kind, verb) in LRO:
        if kind != "dataset":
            t[DS + kind + "." + verb] = ("store:" + kind, verb, "POST", {})
    return t


METHODS = _method_table()
ROUTES = {(shape, verb, http): mid for mid, (shape, verb, http, _) in METHODS.items()}


def now_stamp(t=None):
    """RFC 3339 with microseconds, as Google writes times."""
    t = time.time() if t is None else t
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%06dZ" % int(t % 1 * 1e6)


def camel(name):
    """A FieldMask path element in either spelling (labels, notification_config) -> JSON name."""
    return re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), name)


def violation(field, description):
    return [{"@type": TYPE + "google.rpc.BadRequest",
             "fieldViolations": [{"field": field, "description": description}]}]


def label_problem(labels):
    """Why a labels map breaks Google's rules (keys [\\p{Ll}\\p{Lo}][\\p{Ll}\\p{Lo}\\p{N}_-]{0,62},
    values [\\p{Ll}\\p{Lo}\\p{N}_-]{0,63}, at most 128 UTF-8 bytes each, 64 labels), or None."""
    if not isinstance(labels, dict):
        return "labels must be a map of strings"
    if len(labels) > 64:
        return "labels: no more than 64 labels can be associated with a resource"

    def ok(s, key):
        for i, c in enumerate(s):
            cat = unicodedata.category(c)
            if cat in ("Ll", "Lo") or (not (key and i == 0) and (cat[0] == "N" or c in "_-")):
                continue
            return False
        return True
    for k, v in labels.items():
        if not (1 <= len(k) <= 63) or len(k.encode()) > 128 or not ok(k, True):
            return "labels: invalid key %s: 1 to 63 lowercase letters, digits, _ or -, " \
                   "starting with a lowercase letter" % shown(k)
        if not isinstance(v, str):
            return "labels: the value of %s must be a string" % shown(k)
        if len(v) > 63 or len(v.encode()) > 128 or not ok(v, False):
            return "labels: invalid value %s for key %s: up to 63 lowercase letters, digits, " \
                   "_ or -" % (shown(v), shown(k))
    return None


_ZONES = []


def valid_time_zone(tz):
    """An IANA time zone name (the system's tz database), or empty (UTC)."""
    if not _ZONES:
        import zoneinfo
        _ZONES.append(zoneinfo.available_timezones())
    return tz == "" or tz in _ZONES[0]


def valid_rfc3339(s):
    return isinstance(s, str) and re.match(
        r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?(?:Z|[+-]\d\d:\d\d)$", s) is not None



def partial_response(body, fields):
    """A success's body with the standard parameter `fields` applied, at the top level only
    (`dicomStores/name` keeps all of dicomStores): Google leaves out every field not named, so a
    list asked for without nextPageToken ends after its first page. `*` keeps everything."""
    if not fields or not isinstance(body, dict):
        return body
    names, depth, start, text = set(), 0, 0, fields[-1]
    for i, c in enumerate(text + ","):
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "," and depth == 0:
            names.add(re.split(r"[/(]", text[start:i].strip(), maxsplit=1)[0])
            start = i + 1
    if "*" in names:
        return body
    return {k: v for k, v in body.items() if k in names}

class AdminError(Exception):
    """An answer in Google's envelope: (HTTP status, message, field or None, status name)."""

    def __init__(self, status, message, field=None, status_name=None):
        super().__init__(message)
        self.status, self.message, self.field, self.status_name = \
            status, message, field, status_name


def bad(message, field=None):
    return AdminError(400, message, field)


def dataset_of(name):
    return name.split("/dicomStores/")[0].split("/fhirStores/")[0].split("/hl7V2Stores/")[0] \
        .split("/operations/")[0]


# ---------------------------------------------------------------- state

def init_state(st):
    """The admin part of State.reset (called with st.lock held)."""
    st.datasets = {}      # name -> Dataset resource as Google answers it
    st.stores = {}        # name -> {"kind": "dicomStores"|..., "resource": {...}}
    st.policies = {}      # resource name -> Policy
    st.operations = {}    # name -> operation record (see new_operation)
    st.op_seq = 0
    st.page_tokens = {}   # nextPageToken -> (list scope, last key given): opaque to clients
    # DICOM store -> {SOP Instance UID: True}, in the order stored: what a store holds for
    # export and de-identify (stored through it by STOW, import or de-identify). Orthanc holds
    # the bytes, shared by every store: a DICOMweb delete forgets the instances in every store;
    # one deleted behind the emulator's back is a failed item of the work that needs it.
    st.holdings = {}
    gcs_root = getattr(st.args, "gcs_root", None)
    st.gcs = gcs.Root(gcs_root) if gcs_root else None
    for name in st.args.store:
        add_dicom_store(st, name)


def add_dicom_store(st, name):
    """Registers a DICOM store (and its dataset when new), with st.lock held: what
    --store and /_control/stores do."""
    dataset = name.split("/dicomStores/")[0]
    if dataset not in st.datasets:
        st.datasets[dataset] = {"name": dataset, "timeZone": "UTC"}
    if name not in st.stores:
        st.stores[name] = {"kind": "dicomStores", "resource": {"name": name}}


def new_operation(st, dataset, api_method, polls, error=None, response=None, units=None,
                  work=None):
    """A long-running operation under dataset, with st.lock held; its name. It answers
    `polls` polls without done, then done with `response` (an Any: {"@type": ...}) or with
    `error` ({"code", "message"}). `units`: the size of its simulated progress counter (None:
    none). `work` (an emulator_gcs.Work): real work, done in steps on the polls: after poll k
    of `polls`, k/(polls + 1) of its items; the next poll finishes it, and the operation is
    done when its work is (its counter and error are the work's)."""
    st.op_seq += 1
    if error and not isinstance(error, dict):
        error = {"code": 13, "message": str(error)}
    name = "%s/operations/%d" % (dataset, secrets.randbits(62))
    st.operations[name] = {
        "name": name, "api": HC + api_method, "created": time.time(), "seq": st.op_seq,
        "polls": max(0, int(polls)), "answered": 0, "ended": None, "cancelled": False,
        "error": dict(error) if error else None,
        "response": response or {"@type": TYPE + "google.protobuf.Empty"},
        "units": units, "work": work,
    }
    st.stats["operations_created"] += 1
    return name


def op_done(op):
    if op["cancelled"]:
        return True
    if op.get("work") is not None:
        return op["work"].finished
    return op["answered"] >= op["polls"]


def add_holdings(st, store, sops):
    """Records SOP Instance UIDs stored through a DICOM store (st.lock not held)."""
    with st.lock:
        held = st.holdings.setdefault(store, {})
        for sop in sops:
            held[sop] = True


def drop_holdings(st, sops):
    """Forgets SOP Instance UIDs deleted from Orthanc, in every store (st.lock not held)."""
    with st.lock:
        for held in st.holdings.values():
            for sop in sops:
                held.pop(sop, None)


def operation_logs(st, name):
    """What Cloud Logging would hold of an operation: its per-item errors, or None when the
    operation is unknown."""
    with st.lock:
        op = st.operations.get(name)
        if op is None:
            return None
        work = op.get("work")
        return {"entries": list(work.log) if work is not None else []}


def op_json(op, project, running=False):
    """The Operation as Google answers it, for its state now (st.lock held); running: as a
    poll answered without done (it may be done for the next one)."""
    done = op_done(op) and not running
    if done and op["ended"] is None:
        op["ended"] = time.time()
    meta = {"@type": TYPE + HC + "OperationMetadata", "apiMethodName": op["api"],
            "createTime": now_stamp(op["created"])}
    if done:
        meta["endTime"] = now_stamp(op["ended"])
    if op["cancelled"]:
        meta["cancelRequested"] = True
    meta["logsUrl"] = ("https://console.cloud.google.com/logs/query/query=operation.id%%3D%%22%s"
                       "%%22?project=%s" % (urllib.parse.quote(op["name"], safe=""), project))
    work = op.get("work")
    if work is not None:
        counter = work.counter()
        if done:
            counter.pop("pending")
        meta["counter"] = {k: str(v) for k, v in counter.items() if v}
    elif op["units"] is not None:
        total = int(op["units"])
        success = total * op["answered"] // (op["polls"] + 1)
        if done and not op["error"] and not op["cancelled"]:
            success = total
        counter = {"success": success, "failure": 0, "pending": total - success}
        if done:
            counter["pending"] = 0
            if op["error"] and not op["cancelled"]:
                counter["failure"] = total - success
        # int64 fields are strings in JSON; zero values are left out (proto3).
        meta["counter"] = {k: str(v) for k, v in counter.items() if v}
    body = {"name": op["name"], "metadata": meta}
    error = op["error"] or (work.error if work is not None else None)
    if done:
        body["done"] = True
        if error:
            body["error"] = {"code": int(error.get("code", 13)),
                             "message": str(error.get("message", "operation failed"))}
        else:
            body["response"] = op["response"]
    return body


# ---------------------------------------------------------------- the handler's part

class AdminMixin:
    """Request handling of the admin methods; mixed into emulator.Handler."""

    # -- routing

    def parse_admin_path(self, path):
        """(shape, custom verb, names) for a /v1/ path, or None. shape is one of locations,
        location, datasets, dataset, stores:<kind>, store:<kind>, operations, operation."""
        raw = path[len("/v1/"):].split("/")
        verb = None
        if raw and ":" in raw[-1]:
            raw[-1], verb = raw[-1].rsplit(":", 1)
        try:
            seg = [urllib.parse.unquote(s, errors="strict") for s in raw]
        except UnicodeDecodeError:
            return None
        # A %2F decodes to a "/" that would make another resource's name: no route.
        if len(seg) < 3 or any(s == "" or "/" in s for s in seg) or seg[0] != "projects":
            return None
        n = len(seg)
        if n >= 3 and seg[2] != "locations" or n >= 5 and seg[4] != "datasets":
            return None
        name = "/".join(seg)
        if n == 3:
            return "locations", verb, {"parent": "/".join(seg[:2])}
        if n == 4:
            return "location", verb, {"name": name}
        if n == 5:
            return "datasets", verb, {"parent": "/".join(seg[:4])}
        if n == 6:
            return "dataset", verb, {"name": name}
        dataset = "/".join(seg[:6])
        if seg[6] == "operations":
            if n == 7:
                return "operations", verb, {"name": dataset}
            if n == 8:
                return "operation", verb, {"name": name, "dataset": dataset}
            return None
        if seg[6] in KINDS and n == 7:
            return "stores:" + seg[6], verb, {"parent": dataset, "kind": seg[6]}
        if seg[6] in KINDS and n == 8:
            return "store:" + seg[6], verb, {"name": name, "kind": seg[6], "dataset": dataset}
        return None

    def admin(self):
        """Answers an admin method when the path and verb name one; False when they do not."""
        st = self.server.state
        parsed = self.parse_admin_path(self.url.path)
        if parsed is None:
            return False
        shape, verb, names = parsed
        http = "GET" if self.command == "HEAD" else self.command
        mid = ROUTES.get((shape, verb, http))
        if mid is None:
            unserved = NOT_SERVED.get((shape.split(":")[-1], verb))
            if unserved is None:
                return False
            self._api_method = unserved
            if self.authorize() is None:
                return True
            self.record(501)
            self.send_envelope(501, "%s is not served by the test bed's emulator" % unserved)
            return True
        self._api_method = mid
        cfg = self.authorize()
        if cfg is None:
            return True
        st.bump("admin_requests", mid)
        if mid == DS + "operations.get":
            st.bump("operation_polls")
            status = self.apply_fault("operation")
            if status:
                return self.record(status) or True
        rule = self.server.state.take_fault("admin", method=mid,
                                            makes_operation=self.makes_operation(mid))
        if rule is not None:
            status = self.answer_fault("admin", rule)
            if status:
                return self.record(status) or True
        handler = getattr(self, "a_" + mid.split(".")[-1].replace("-", "_"))
        try:
            query = self.admin_query(METHODS[mid][3])
            status, body = handler(mid, names, cfg, query, rule or {})
        except AdminError as e:
            self.record(e.status)
            details = violation(e.field, e.message) if e.field else None
            self.send_envelope(e.status, e.message, details, status_name=e.status_name)
            return True
        self.record(status)
        self.send_json(status, partial_response(body, self.query.get("fields")) if status < 300 else body)
        return True

    @staticmethod
    def makes_operation(mid):
        return mid == DS + "create" or mid.split(".")[-1] in ("import", "export", "deidentify",
                                                               "rollback")

    def admin_query(self, own):
        """The method's own query parameters, checked: unknown names and bad integers are
        refused the way Google refuses them (400 INVALID_ARGUMENT naming the parameter)."""
        out = {}
        for name, values in self.query.items():
            if name in STANDARD_PARAMS:
                continue
            kind = own.get(name)
            if kind is None:
                raise bad("Invalid JSON payload received. Unknown name %s: Cannot bind query "
                          "parameter. Field %s could not be found in request message."
                          % (shown(name), shown(name)), name)
            if kind == "repeated":
                out[name] = list(values)
                continue
            value = values[-1]
            if kind == "int":
                if not re.match(r"^-?[0-9]{1,9}$", value):
                    raise bad("Invalid value at %s (TYPE_INT32), %s" % (shown(name), shown(value)),
                              name)
                value = int(value)
            out[name] = value
        return out

    def admin_body(self, schema):
        """The JSON request body as a dict ({} when empty), its top-level names checked against
        the schema's fields."""
        data, size = b"", 0
        for chunk in self.body_chunks():
            size += len(chunk)
            if size <= BODY_CAP:
                data += chunk
        if size > BODY_CAP:
            # Google's front end answers an oversized payload this way (400, not 413).
            raise bad("Request payload size exceeds the limit: %d bytes." % BODY_CAP)
        if not data.strip():
            return {}
        try:
            body = json.loads(data)
        except ValueError as e:
            raise bad("Invalid JSON payload received. %s" % e) from None
        if not isinstance(body, dict):
            raise bad("Invalid JSON payload received. Expected an object, got %s."
                      % type(body).__name__)
        for key in body:
            if key not in FIELDS[schema]:
                raise bad("Invalid JSON payload received. Unknown name %s: Cannot find field."
                          % shown(key), key)
        return body

    # -- lookups (st.lock held)

    def need_dataset(self, name):
        ds = self.server.state.datasets.get(name)
        if ds is None:
            raise AdminError(404, "Dataset not found: %s" % name)
        return ds

    def need_store(self, name, kind):
        entry = self.server.state.stores.get(name)
        if entry is None or entry["kind"] != kind:
            raise AdminError(404, "%s not found: %s" % (KINDS[kind]["what"], name))
        return entry

    def need_resource(self, names):
        """The dataset or store the IAM/LRO methods act on."""
        if "kind" in names:
            return self.need_store(names["name"], names["kind"])["resource"]
        return self.need_dataset(names["name"])

    # -- paging

    def page(self, items, scope, query, field):
        """items: [(sort key, JSON)] sorted; the answer's page and nextPageToken, from pageSize
        (default 100, at most 1000) and an opaque pageToken bound to this list (scope)."""
        st = self.server.state
        size = query.get("pageSize", 0)
        if size < 0:
            raise bad("pageSize must not be negative", "pageSize")
        size = min(size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        after = None
        token = query.get("pageToken")
        with st.lock:
            if token:
                known = st.page_tokens.get(token)
                if known is None or known[0] != scope:
                    raise bad("Invalid pageToken: %s" % shown(token), "pageToken")
                after = known[1]
            # Keys sort as the items do: a page goes on after the last one given, whatever
            # was added or removed since.
            rest = [x for x in items if after is None or x[0] > after]
            page = rest[:size]
            out = {}
            if page:
                out[field] = [obj for _, obj in page]
            if len(rest) > size:
                out["nextPageToken"] = secrets.token_urlsafe(24)
                st.page_tokens[out["nextPageToken"]] = (scope, page[-1][0])
                while len(st.page_tokens) > PAGE_TOKENS_KEPT:
                    del st.page_tokens[next(iter(st.page_tokens))]
        return out

    @staticmethod
    def label_filter(expr):
        """A predicate on a store from a list filter: terms `labels.KEY=VALUE` (VALUE bare or
        quoted) or `labels.KEY:*`, joined by AND (the only filtering Google supports here)."""
        terms = []
        for term in re.split(r"\s+AND\s+", expr.strip()) if expr.strip() else []:
            m = re.match(r'^labels\.([^\s=:]+)\s*(=|:)\s*("(?:[^"\\]|\\.)*"|[^\s"]+)$', term)
            if not m or (m.group(2) == ":" and m.group(3) != "*"):
                raise bad("Invalid filter %s: only labels.KEY=VALUE, labels.KEY:* and AND are "
                          "supported" % shown(expr), "filter")
            value = m.group(3)
            if value.startswith('"'):
                value = json.loads(value)
            terms.append((m.group(1), None if m.group(2) == ":" else value))
        return lambda res: all(k in (res.get("labels") or {}) and
                               (v is None or res["labels"][k] == v) for k, v in terms)

    # -- locations

    def a_list(self, mid, names, cfg, query, _rule):
        st = self.server.state
        if mid == P + "list":
            if query.get("filter"):
                raise bad("Invalid filter %s: the emulator takes none" % shown(query["filter"]),
                          "filter")
            items = [(loc, self.location(names["parent"], loc)) for loc in sorted(cfg["locations"])]
            return 200, self.page(items, names["parent"] + "/locations", query, "locations")
        # The items under the lock, the page after it (page() takes the lock itself).
        with st.lock:
            if mid == DS + "list":
                prefix = names["parent"] + "/datasets/"
                items = [(n, copy.deepcopy(d)) for n, d in sorted(st.datasets.items())
                         if n.startswith(prefix) and "/" not in n[len(prefix):]]
                scope, field = prefix, "datasets"
            elif mid == DS + "operations.list":
                self.need_dataset(names["name"])
                keep = self.operation_filter(query.get("filter") or "")
                project = names["name"].split("/")[1]
                ops = sorted((o["seq"], o) for n, o in st.operations.items()
                             if n.startswith(names["name"] + "/operations/"))
                items = [("%020d" % seq, op_json(o, project)) for seq, o in ops]
                items = [x for x in items if keep(x[1])]
                scope = names["name"] + "/operations|" + (query.get("filter") or "")
                field = "operations"
            else:
                kind = names["kind"]
                self.need_dataset(names["parent"])
                keep = self.label_filter(query.get("filter") or "")
                prefix = names["parent"] + "/" + kind + "/"
                items = [(n, copy.deepcopy(e["resource"])) for n, e in sorted(st.stores.items())
                         if n.startswith(prefix) and e["kind"] == kind and keep(e["resource"])]
                scope, field = prefix + "|" + (query.get("filter") or ""), kind
        return 200, self.page(items, scope, query, field)

    @staticmethod
    def operation_filter(expr):
        """`done=true|false` and `metadata.apiMethodName="..."`, joined by AND."""
        terms = []
        for term in re.split(r"\s+AND\s+", expr.strip()) if expr.strip() else []:
            m = re.match(r'^(done|metadata\.apiMethodName|metadata\.api_method_name)\s*=\s*'
                         r'("(?:[^"\\]|\\.)*"|[^\s"]+)$', term)
            if not m or (m.group(1) == "done" and m.group(2) not in ("true", "false")):
                raise bad("Invalid filter %s: only done=true|false, metadata.apiMethodName=\"...\" "
                          "and AND are supported" % shown(expr), "filter")
            value = m.group(2)
            value = json.loads(value) if value.startswith('"') else value
            terms.append((m.group(1), value))

        def keep(op):
            for field, value in terms:
                if field == "done" and bool(op.get("done")) != (value == "true"):
                    return False
                if field != "done" and op["metadata"]["apiMethodName"] != value:
                    return False
            return True
        return keep

    def location(self, project_name, loc):
        return {"name": "%s/locations/%s" % (project_name, loc), "locationId": loc}

    # -- get / create / patch / delete

    def a_get(self, mid, names, cfg, _query, _rule):
        st = self.server.state
        if mid == P + "get":
            loc = names["name"].split("/")[3]
            if loc not in cfg["locations"]:
                raise AdminError(404, "Location not found: %s" % names["name"])
            return 200, self.location("/".join(names["name"].split("/")[:2]), loc)
        if mid == DS + "operations.get":
            return self.poll(names["name"])
        with st.lock:
            if mid == DS + "get":
                return 200, copy.deepcopy(self.need_dataset(names["name"]))
            return 200, copy.deepcopy(self.need_store(names["name"], names["kind"])["resource"])

    def poll(self, name):
        """operations.get: a poll. A simulated operation answers its polls without done, then
        done; one with work does a step of it first (outside the state's lock: it talks to
        Orthanc and the file system), so its counter moves with the polls."""
        st = self.server.state
        project = name.split("/")[1]
        with st.lock:
            op = st.operations.get(name)
            if op is None:
                raise AdminError(404, "Operation not found: %s" % name)
            work = op.get("work")
            if work is None or op_done(op):
                if not op_done(op):
                    op["answered"] += 1
                    return 200, op_json(op, project, running=True)
                return 200, op_json(op, project)
            op["answered"] += 1
            polls, answered = op["polls"], op["answered"]
        total = len(work.items)
        target = total if answered > polls else total * answered // (polls + 1)
        work.advance(target, lambda: op["cancelled"])
        with st.lock:
            return 200, op_json(op, project)

    def check_id(self, param, value):
        if value is None or value == "":
            raise bad("Missing required parameter: %s" % param, param)
        if not ID_RE.fullmatch(value):
            raise bad("Invalid %s %s: it must match %s" % (param, shown(value), ID_RULE), param)

    def check_resource(self, schema, res):
        """Google's checks on the fields a resource carries (labels, FHIR version, time zone)."""
        if "labels" in res:
            why = label_problem(res["labels"])
            if why:
                raise bad(why, "labels")
        if schema == "Dataset" and "timeZone" in res and \
                not (isinstance(res["timeZone"], str) and valid_time_zone(res["timeZone"])):
            raise bad("Invalid timeZone %s: an IANA time zone name such as America/New_York"
                      % shown(res["timeZone"]), "timeZone")
        if schema == "FhirStore" and res.get("version") not in FHIR_VERSIONS:
            if res.get("version") in (None, "", "VERSION_UNSPECIFIED"):
                raise bad("version is required: one of %s" % ", ".join(FHIR_VERSIONS), "version")
            raise bad("Invalid value at 'version' (TYPE_ENUM), %s: one of %s"
                      % (shown(res["version"]), ", ".join(FHIR_VERSIONS)), "version")

    def a_create(self, mid, names, cfg, query, rule):
        st = self.server.state
        if mid == DS + "create":
            body = self.admin_body("Dataset")
            self.check_id("datasetId", query.get("datasetId"))
            res = {k: v for k, v in body.items()
                   if k not in ("name", "satisfiesPzi", "satisfiesPzs")}   # output only
            res.setdefault("timeZone", "UTC")
            self.check_resource("Dataset", res)
            name = names["parent"] + "/datasets/" + query["datasetId"]
            res = dict({"name": name}, **res)
            error = rule.get("operation_error") or cfg.get("operation_error")
            with st.lock:
                if name in st.datasets:
                    raise AdminError(409, "Dataset already exists: %s" % name)
                if not error:
                    st.datasets[name] = res
                op = new_operation(st, name, "dataset.DatasetService.CreateDataset",
                                   cfg["operation_polls"], error,
                                   dict({"@type": TYPE + HC + "dataset.Dataset"}, **res))
            return 200, {"name": op}
        kind = names["kind"]
        k = KINDS[kind]
        body = self.admin_body(k["schema"])
        self.check_id(k["id"], query.get(k["id"]))
        res = {x: v for x, v in body.items() if x != "name"}
        self.check_resource(k["schema"], res)
        name = "%s/%s/%s" % (names["parent"], kind, query[k["id"]])
        res = dict({"name": name}, **res)
        with st.lock:
            self.need_dataset(names["parent"])
            if name in st.stores:
                raise AdminError(409, "%s already exists: %s" % (k["what"], name))
            st.stores[name] = {"kind": kind, "resource": res}
            return 200, copy.deepcopy(res)

    def a_patch(self, mid, names, _cfg, query, _rule):
        st = self.server.state
        is_dataset = mid == DS + "patch"
        schema = "Dataset" if is_dataset else KINDS[names["kind"]]["schema"]
        immutable = DATASET_IMMUTABLE if is_dataset else KINDS[names["kind"]]["immutable"]
        body = self.admin_body(schema)
        mask = query.get("updateMask")
        if not mask or not mask.strip():
            raise bad("updateMask is required: the fields to change, comma-separated",
                      "updateMask")
        paths = []
        for path in (p.strip() for p in mask.split(",")):
            parts = [camel(x) for x in path.split(".")] if path else []
            if not parts or not all(parts) or parts[0] not in FIELDS[schema]:
                raise bad("Invalid updateMask: unknown field %s in %s (valid: %s)"
                          % (shown(path), schema, ", ".join(
                              f for f in FIELDS[schema] if f not in immutable)), "updateMask")
            if parts[0] in immutable:
                raise bad("Invalid updateMask: field %s cannot be updated" % shown(path),
                          "updateMask")
            paths.append(parts)
        with st.lock:
            current = self.need_dataset(names["name"]) if is_dataset else \
                self.need_store(names["name"], names["kind"])["resource"]
            new = copy.deepcopy(current)
            for parts in paths:
                src, dst = body, new
                for p in parts[:-1]:
                    src = src.get(p) if isinstance(src, dict) else None
                    if not isinstance(dst.get(p), dict):
                        dst[p] = {}
                    dst = dst[p]
                if isinstance(src, dict) and parts[-1] in src:
                    dst[parts[-1]] = copy.deepcopy(src[parts[-1]])
                else:
                    dst.pop(parts[-1], None)
            self.check_resource(schema, new)
            if is_dataset:
                st.datasets[names["name"]] = new
            else:
                st.stores[names["name"]]["resource"] = new
            return 200, copy.deepcopy(new)

    def a_delete(self, mid, names, _cfg, _query, _rule):
        st = self.server.state
        name = names["name"]
        with st.lock:
            if mid == DS + "delete":
                self.need_dataset(name)
                # All it holds goes with it: stores, their policies, its operations.
                for inner in [n for n in list(st.stores) + list(st.policies) + list(st.operations)
                              if n.startswith(name + "/")]:
                    st.stores.pop(inner, None)
                    st.holdings.pop(inner, None)
                    st.policies.pop(inner, None)
                    st.operations.pop(inner, None)
                del st.datasets[name]
            else:
                self.need_store(name, names["kind"])
                del st.stores[name]
                st.holdings.pop(name, None)
            st.policies.pop(name, None)
            st.stats["deleted"][mid.split(".")[-2]] = st.stats["deleted"].get(
                mid.split(".")[-2], 0) + 1
        return 200, {}

    # -- IAM

    def a_getIamPolicy(self, _mid, names, _cfg, query, _rule):
        st = self.server.state
        version = query.get("options.requestedPolicyVersion")
        if version is not None and version not in (0, 1, 3):
            raise bad("Invalid options.requestedPolicyVersion %d: valid values are 0, 1 and 3"
                      % version, "options.requestedPolicyVersion")
        with st.lock:
            self.need_resource(names)
            return 200, copy.deepcopy(st.policies.get(names["name"],
                                                      {"etag": EMPTY_POLICY_ETAG}))

    def a_setIamPolicy(self, _mid, names, _cfg, _query, _rule):
        st = self.server.state
        body = self.admin_body("SetIamPolicyRequest")
        policy = body.get("policy")
        if not isinstance(policy, dict):
            raise bad("policy is required", "policy")
        for key in policy:
            if key not in FIELDS["Policy"]:
                raise bad("Invalid JSON payload received. Unknown name %s: Cannot find field."
                          % shown("policy." + key), "policy." + key)
        mask = body.get("updateMask") or "bindings,etag"
        fields = [camel(f.strip()) for f in str(mask).split(",") if f.strip()]
        for f in fields:
            if f not in FIELDS["Policy"]:
                raise bad("Invalid updateMask: unknown field %s in Policy" % shown(f),
                          "updateMask")
        etag = policy.get("etag")
        if etag is not None:
            try:
                if not isinstance(etag, str) or not base64.b64decode(etag, validate=True):
                    raise ValueError(etag)
            except (ValueError, binascii.Error):
                raise bad("Invalid value at 'policy.etag' (TYPE_BYTES), %s" % shown(etag),
                          "policy.etag") from None
        version = policy.get("version", 1)
        if version not in (0, 1, 3):
            raise bad("Invalid value at 'policy.version', %s: valid values are 0, 1 and 3"
                      % shown(version), "policy.version")
        bindings = policy.get("bindings", [])
        if not isinstance(bindings, list):
            raise bad("policy.bindings must be a list", "policy.bindings")
        for i, b in enumerate(bindings):
            role = b.get("role") if isinstance(b, dict) else None
            members = b.get("members") if isinstance(b, dict) else None
            if not isinstance(role, str) or not re.match(r"^(?:[a-z]+/[^/]+/)*roles/\S+$", role):
                raise bad("Invalid role %s at policy.bindings[%d].role" % (shown(role), i),
                          "policy.bindings[%d].role" % i)
            if not isinstance(members, list) or not members:
                raise bad("No principal at policy.bindings[%d].members: each binding needs one"
                          % i, "policy.bindings[%d].members" % i)
            for m in members:
                if not isinstance(m, str) or not MEMBER_RE.match(m):
                    raise bad("Invalid principal %s at policy.bindings[%d].members"
                              % (shown(m), i), "policy.bindings[%d].members" % i)
        with st.lock:
            self.need_resource(names)
            current = st.policies.get(names["name"], {"etag": EMPTY_POLICY_ETAG})
            if etag is not None and etag != current["etag"]:
                raise AdminError(409, MSG_ABORTED, status_name="ABORTED")
            new = {k: v for k, v in current.items() if k != "etag"}
            for f in fields:
                if f != "etag" and f in policy:
                    new[f] = copy.deepcopy(policy[f])
                elif f != "etag":
                    new.pop(f, None)
            new["version"] = version if "version" in fields else new.get("version", 1)
            if not new.get("bindings"):
                new.pop("bindings", None)
            new["etag"] = base64.b64encode(b"\x07" + secrets.token_bytes(7)).decode()
            st.policies[names["name"]] = new
            st.stats["iam_policies_set"] += 1
            return 200, copy.deepcopy(new)

    def a_testIamPermissions(self, _mid, names, _cfg, _query, _rule):
        st = self.server.state
        body = self.admin_body("TestIamPermissionsRequest")
        perms = body.get("permissions", [])
        if not isinstance(perms, list) or not all(isinstance(p, str) for p in perms):
            raise bad("permissions must be a list of strings", "permissions")
        wild = [p for p in perms if "*" in p]
        if wild:
            raise bad("permissions with wildcards are not allowed: %s"
                      % ", ".join(shown(p) for p in wild), "permissions")
        with st.lock:
            try:
                self.need_resource(names)
            except AdminError:
                return 200, {}   # "an empty set of permissions, not a NOT_FOUND error"
        # Any accepted credential holds every healthcare permission here.
        granted = [p for p in perms if PERMISSION_RE.match(p) and p.startswith("healthcare.")]
        return 200, {"permissions": granted} if granted else {}

    # -- long-running methods

    def a_cancel(self, _mid, names, _cfg, _query, _rule):
        st = self.server.state
        self.admin_body("CancelOperationRequest")
        with st.lock:
            op = st.operations.get(names["name"])
            if op is None:
                raise AdminError(404, "Operation not found: %s" % names["name"])
            if not op_done(op):
                # Ends at once (Google: "best effort"); what it made stays made.
                op["cancelled"] = True
                op["error"] = {"code": 1, "message": "Operation cancelled by the caller."}
                st.stats["operations_cancelled"] += 1
            work = op.get("work")
        if work is not None:
            work.try_abort()   # a step running now stops before its next item
        return 200, {}

    def a_lro(self, mid, names, cfg, _query, rule):
        """import, export, deidentify, rollback: the request checked, then an operation (with
        its work, when the emulator has a Cloud Storage directory and the method is one of
        MIGRATIONS)."""
        st = self.server.state
        verb = mid.split(".")[-1]
        kind = names.get("kind", "dataset")
        schema, api_method, response_type = LRO[(kind, verb)]
        body = self.admin_body(schema)
        self.check_lro_body(kind, verb, body)
        error = rule.get("operation_error") or cfg.get("operation_error")
        response = {"@type": TYPE + HC + response_type}
        if kind == "fhirStores" and verb in ("import", "export", "rollback"):
            response["fhirStore"] = names["name"]
        if kind == "hl7V2Stores" and verb == "rollback":
            response["hl7v2Store"] = names["name"]
        real = st.gcs is not None and not error and (kind, verb) in MIGRATIONS
        with st.lock:
            source = self.need_resource(names)
            if verb == "deidentify":
                self.make_deidentified(kind, names, source, body, make=False)
        make_work, units = None, int(cfg["operation_units"])
        if real:
            try:
                make_work = self.plan_work(kind, verb, names, body, cfg)
            except gcs.GcsError as e:
                raise AdminError(e.status, e.message, e.field if e.status == 400 else None) \
                    from None
            except gcs.OpError as e:
                # Found while listing (no bucket, no file): the operation ends with it.
                error, units = {"code": e.code, "message": e.message}, None
        with st.lock:
            source = self.need_resource(names)
            if verb == "deidentify":
                self.make_deidentified(kind, names, source, body, make=not error)
            work = make_work(st) if make_work else None
            op = new_operation(st, names.get("dataset", names["name"]), api_method,
                               cfg["operation_polls"], error, response,
                               units=None if work else units, work=work)
        return 200, {"name": op}

    a_import = a_export = a_deidentify = a_rollback = a_lro

    @staticmethod
    def check_lro_body(kind, verb, body):
        def need_gs(obj, field, **how):
            """obj[the field's last name] is a gs:// URI (obj: the object holding it)."""
            value = obj.get(field.split(".")[-1]) if isinstance(obj, dict) else None
            try:
                gcs.parse_gs(value, field, **how)
            except gcs.GcsError as e:
                raise bad(e.message, e.field) from None
        if verb == "import":
            need_gs(body.get("gcsSource"), "gcsSource.uri", wildcards=True, need_object=True)
        elif verb == "export":
            if "bigqueryDestination" in body and "gcsDestination" not in body:
                dest = body["bigqueryDestination"]
                field = "tableUri" if kind == "dicomStores" else "datasetUri"
                value = dest.get(field) if isinstance(dest, dict) else None
                if not isinstance(value, str) or not value.startswith("bq://"):
                    raise bad("bigqueryDestination.%s must be bq://PROJECT.DATASET..., not %s"
                              % (field, shown(value)), "bigqueryDestination." + field)
            elif kind == "hl7V2Stores" and "pubsubDestination" in body \
                    and "gcsDestination" not in body:
                topic = body["pubsubDestination"]
                topic = topic.get("pubsubTopic") if isinstance(topic, dict) else None
                if not isinstance(topic, str) or not re.match(r"^projects/[^/]+/topics/[^/]+$",
                                                              topic):
                    raise bad("pubsubDestination.pubsubTopic must be projects/P/topics/T, not %s"
                              % shown(topic), "pubsubDestination.pubsubTopic")
            else:
                need_gs(body.get("gcsDestination"), "gcsDestination.uriPrefix")
        elif verb == "rollback":
            if not valid_rfc3339(body.get("rollbackTime")):
                raise bad("rollbackTime is required, an RFC 3339 time, not %s"
                          % shown(body.get("rollbackTime")), "rollbackTime")
            need_gs(body, "resultGcsBucket")
        elif verb == "deidentify":
            if "config" in body and "gcsConfigUri" in body:
                raise bad("Only one of config and gcsConfigUri can be specified", "gcsConfigUri")

    def plan_work(self, kind, verb, names, body, cfg):
        """Checks what only real work needs (raising GcsError), reads what must be read
        before the operation is made (the import's file list, a gcsConfigUri), and answers a
        function of the state (its lock held) making the operation's Work."""
        st = self.server.state
        ctx = {"state": st, "root": st.gcs,
               "orthanc": gcs.Orthanc(st.args.orthanc, st.args.orthanc_auth)}
        store = names["name"]

        def held(name):
            return list(st.holdings.get(name, {}))
        if verb == "import":
            gcs.known_fields(body["gcsSource"], ("uri",), "gcsSource")
            bucket, pattern = gcs.parse_gs(body["gcsSource"]["uri"], "gcsSource.uri",
                                           wildcards=True, need_object=True)
            files = st.gcs.list(bucket, pattern)
            if not files:
                raise gcs.OpError(gcs.NOT_FOUND, "No files found matching %s"
                                  % body["gcsSource"]["uri"])
            return lambda _: gcs.ImportWork(ctx, store, bucket, files,
                                            bool(cfg["check_conflicts"]))
        if verb == "export":
            if "gcsDestination" in body and "bigqueryDestination" in body:
                raise gcs.GcsError("bigqueryDestination", "Only one of gcsDestination and "
                                   "bigqueryDestination can be specified")
            if "gcsDestination" in body:
                dest = body["gcsDestination"]
                gcs.known_fields(dest, ("mimeType", "uriPrefix"), "gcsDestination")
                bucket, prefix = gcs.parse_gs(dest["uriPrefix"], "gcsDestination.uriPrefix")
                ts = gcs.parse_export_mime(dest.get("mimeType"), "gcsDestination.mimeType")
                # "If there is no trailing slash, the service appends one".
                prefix = prefix + "/" if prefix and not prefix.endswith("/") else prefix
                return lambda _: gcs.ExportGcsWork(ctx, held(store), bucket, prefix, ts)
            dest = body["bigqueryDestination"]
            gcs.known_fields(dest, ("force", "tableUri", "writeDisposition"),
                             "bigqueryDestination")
            table = ".".join(gcs.parse_bq(dest.get("tableUri"), "bigqueryDestination.tableUri"))
            force = dest.get("force", False)
            if not isinstance(force, bool):
                raise gcs.GcsError("bigqueryDestination.force",
                                   "bigqueryDestination.force must be true or false")
            disposition = dest.get("writeDisposition", gcs.WRITE_DISPOSITIONS[0])
            if disposition not in gcs.WRITE_DISPOSITIONS:
                raise gcs.GcsError("bigqueryDestination.writeDisposition",
                                   "Invalid value at 'bigqueryDestination.write_disposition' "
                                   "(TYPE_ENUM), %s: one of %s" % (shown(disposition), ", ".join(
                                       gcs.WRITE_DISPOSITIONS)))
            # "If write_disposition is specified, this parameter [force] is ignored.
            # force=false is equivalent to write_disposition=WRITE_EMPTY and force=true is
            # equivalent to write_disposition=WRITE_TRUNCATE" -- except that force=false also
            # refuses an existing empty table (the BigQuery export how-to).
            if disposition == gcs.WRITE_DISPOSITIONS[0]:
                disposition = "WRITE_TRUNCATE" if force else "FORCE_FALSE"
            return lambda _: gcs.ExportBigQueryWork(ctx, held(store), table, disposition)
        # deidentify
        if "filterConfig" in body:
            raise gcs.GcsError("filterConfig", "filterConfig is not served by the test bed's "
                               "emulator", 501)
        config = body.get("config")
        if "gcsConfigUri" in body:
            config = gcs.read_config_object(st.gcs, body["gcsConfigUri"], "gcsConfigUri")
        plan = gcs.DeidPlan(config, "config")
        if kind == "dataset":
            dest = body["destinationDataset"]

            def items(_):
                out = []
                for name, entry in sorted(st.stores.items()):
                    if entry["kind"] == "dicomStores" and name.startswith(store + "/"):
                        target = dest + name[len(store):]
                        out += [(name, target, sop) for sop in held(name)]
                return out
        else:
            def items(_):
                return [(store, body["destinationStore"], sop) for sop in held(store)]
        return lambda _: gcs.DeidentifyWork(ctx, items(_), plan)

    def make_deidentified(self, kind, names, source, body, make=True):
        """The de-identified copy (st.lock held): a new dataset holding a copy of each store
        (datasets.deidentify), or a new store; its DICOM stores show the same Orthanc. The
        destination is checked whatever `make` says (False: an operation that will fail)."""
        st = self.server.state
        field = "destinationDataset" if kind == "dataset" else "destinationStore"
        dest = body.get(field)
        location = "/".join(names["name"].split("/")[:4])
        if kind == "dataset":
            pattern = r"^projects/[^/]+/locations/[^/]+/datasets/%s$" % ID_RE.pattern
        else:
            pattern = r"^projects/[^/]+/locations/[^/]+/datasets/[^/]+/%s/%s$" % (kind,
                                                                                   ID_RE.pattern)
        if not isinstance(dest, str) or not re.match(pattern, dest):
            raise bad("%s is required, the name of the %s to create, not %s"
                      % (field, "dataset" if kind == "dataset" else KINDS[kind]["what"],
                         shown(dest)), field)
        if not dest.startswith(location + "/"):
            raise bad("%s must be in the source's location %s" % (field, location), field)
        if kind == "dataset":
            if dest in st.datasets:
                raise AdminError(409, "Dataset already exists: %s" % dest)
            if not make:
                return
            st.datasets[dest] = dict(copy.deepcopy(source), name=dest)
            for n, e in sorted(st.stores.items()):
                if n.startswith(names["name"] + "/"):
                    copy_name = dest + n[len(names["name"]):]
                    st.stores[copy_name] = {"kind": e["kind"], "resource": dict(
                        copy.deepcopy(e["resource"]), name=copy_name)}
            return
        if dataset_of(dest) not in st.datasets:
            raise AdminError(404, "Dataset not found: %s" % dataset_of(dest))
        if dest in st.stores:
            raise AdminError(409, "%s already exists: %s" % (KINDS[kind]["what"], dest))
        if make:
            st.stores[dest] = {"kind": kind, "resource": dict(copy.deepcopy(source), name=dest)}


def served_methods():
    """What GET /_control/methods answers."""
    return {"served": sorted(METHODS), "not_served": sorted(NOT_SERVED.values()),
            "fields": FIELDS,
            "request_schemas": {DS + k + "." + v if k != "dataset" else DS + v: s
                                for (k, v), (s, _, _) in LRO.items()}}
