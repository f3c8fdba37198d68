# SPDX-License-Identifier: MIT
"""Google's side of the server-side routes, for emulator_admin.py: a directory standing for Cloud
Storage (gs://bucket/x is <root>/bucket/x), and the work of dicomStores.import (files matching
a gs:// pattern stored into Orthanc), dicomStores.export (each instance of a store written as a
file under a gs:// prefix, or one JSON line per instance in <root>/_bigquery/P.D.T.jsonl, the
file standing for a BigQuery table) and dicomStores/datasets.deidentify (copies with tags removed
or emptied and UIDs regenerated, stored into Orthanc for the destination store).

Each operation's work is a list of items done in order, a step at a time, on the operation's
polls (emulator_admin.AdminMixin.a_get): the counter moves as items are done, and a cancel stops
the work between two items.

Nothing outside the root is reached: every path is opened one segment at a time from a
descriptor of the root with O_NOFOLLOW (a symbolic link is no object, and no directory to walk
through), and gs:// URIs are checked before anything is read: a bucket name as Google allows
it, no "." / ".." / empty segments, no control characters.
"""

import hashlib
import http.client
import io
import json
import os
import re
import secrets
import stat
import tempfile
import threading
import traceback
import urllib.parse

CHUNK = 1 << 20
MAX_OBJECT_NAME = 1024           # bytes of UTF-8, Cloud Storage's limit
MAX_ITEMS = 1000000              # objects one import may match
MAX_LOGGED = 1000                # per-item errors an operation keeps (its "Cloud Logging")
BIGQUERY_DIR = "_bigquery"       # not a valid bucket name: no bucket can be named so
CONFIG_CAP = 1 << 20             # bytes of a gcsConfigUri object

# google.rpc.Code values the operations end with.
INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION, INTERNAL = 3, 5, 9, 13

# DICOM export MIME types (GoogleCloudHealthcareV1DicomGcsDestination.mimeType, the table
# lua/healthcare/api/v1.lua was generated from): application/dicom with these transfer
# syntaxes, done by Orthanc's transcoder; `*` or none: the bytes as stored.
EXPORT_TRANSFER_SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.50",
                            "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91")
EXPORT_NOT_SERVED = ("application/octet-stream", "image/jpeg", "image/png")

WRITE_DISPOSITIONS = ("WRITE_DISPOSITION_UNSPECIFIED", "WRITE_EMPTY", "WRITE_TRUNCATE",
                      "WRITE_APPEND")
# bq://projectId.bqDatasetId.tableId (a domain-scoped project is "example.com:project").
BQ_RE = re.compile(r"^bq://((?:[a-z][a-z0-9.\-]*[a-z0-9]:)?[a-z][a-z0-9\-]{4,28}[a-z0-9])"
                   r"\.([A-Za-z0-9_]{1,1024})\.([A-Za-z0-9_\-]{1,1024})$")

# DeidentifyConfig and what it holds, as the API's schemas name the fields.
DEID_FIELDS = ("dicom", "fhir", "image", "text", "useRegionalDataProcessing")
DICOM_CONFIG_FIELDS = ("filterProfile", "keepList", "removeList", "skipIdRedaction")
PROFILES = ("TAG_FILTER_PROFILE_UNSPECIFIED", "MINIMAL_KEEP_LIST_PROFILE",
            "ATTRIBUTE_CONFIDENTIALITY_BASIC_PROFILE", "KEEP_ALL_PROFILE",
            "DEIDENTIFY_TAG_CONTENTS")
TEXT_REDACTION_MODES_KEPT = ("TEXT_REDACTION_MODE_UNSPECIFIED", "REDACT_NO_TEXT")

# What an instance keeps whatever the filter says: the four UIDs (regenerated unless
# skipIdRedaction), its class, and the Image Pixel module, without which it is no valid DICOM
# (also MINIMAL_KEEP_LIST_PROFILE: "Keep only tags required to produce valid DICOM", which
# this approximates).
ALWAYS_KEPT = ("SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID",
               "SeriesInstanceUID", "Modality", "SamplesPerPixel", "PhotometricInterpretation",
               "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit",
               "PixelRepresentation", "PlanarConfiguration", "NumberOfFrames", "PixelData")
IDENTITY = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
UIDS_REGENERATED = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")

# ATTRIBUTE_CONFIDENTIALITY_BASIC_PROFILE, approximated: a subset of PS3.15 Table E.1-1
# (the "Basic Prof." column): X removed, Z (and Z/D) emptied, private elements removed.
BASIC_PROFILE_REMOVE = (
    "InstitutionName", "InstitutionAddress", "ReferringPhysicianAddress",
    "ReferringPhysicianTelephoneNumbers", "StationName", "InstitutionalDepartmentName",
    "PhysiciansOfRecord", "PerformingPhysicianName", "NameOfPhysiciansReadingStudy",
    "OperatorsName", "AdmittingDiagnosesDescription", "DerivationDescription",
    "PatientBirthTime", "OtherPatientIDs", "OtherPatientNames", "OtherPatientIDsSequence",
    "PatientBirthName", "PatientAge", "PatientSize", "PatientWeight", "PatientAddress",
    "PatientMotherBirthName", "MilitaryRank", "BranchOfService", "MedicalRecordLocator",
    "PatientTelephoneNumbers", "EthnicGroup", "Occupation", "AdditionalPatientHistory",
    "PatientComments", "DeviceSerialNumber", "ProtocolName", "ImageComments",
    "RequestAttributesSequence", "PerformedProcedureStepDescription", "StudyComments")
BASIC_PROFILE_EMPTY = (
    "AccessionNumber", "ReferringPhysicianName", "PatientName", "PatientID",
    "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "StudyID")

BINARY_VRS = ("OB", "OD", "OF", "OL", "OV", "OW", "UN")
UID_RE = re.compile(r"^(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*$")


class GcsError(Exception):
    """A request refused before anything is read: 400 INVALID_ARGUMENT naming field (501
    UNIMPLEMENTED for what the emulator does not do)."""

    def __init__(self, field, message, status=400):
        super().__init__(message)
        self.field, self.message, self.status = field, message, status


class OpError(Exception):
    """The operation ends with this google.rpc.Status."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code, self.message = code, message


def shown(value, n=80):
    """A value quoted in a message: JSON-escaped and cut, so no control character passes."""
    s = value if isinstance(value, str) else json.dumps(value)
    return json.dumps(s[:n] + ("..." if len(s) > n else ""))


# ---------------------------------------------------------------- gs:// and bq:// URIs

def bucket_problem(bucket):
    """Why Cloud Storage would refuse this bucket name (its naming rules), or None."""
    if not 3 <= len(bucket) <= 222:
        return "a bucket name has 3 to 63 characters (222 with dots)"
    if not re.fullmatch(r"[a-z0-9][a-z0-9._\-]*[a-z0-9]", bucket):
        return "a bucket name has lowercase letters, digits, -, _ and ., and starts and ends " \
               "with a letter or digit"
    parts = bucket.split(".")
    if len(parts) == 1 and len(bucket) > 63 or any(not 1 <= len(p) <= 63 for p in parts):
        return "a bucket name has 3 to 63 characters, or dot-separated parts of 1 to 63"
    if re.fullmatch(r"\d+\.\d+\.\d+\.\d+", bucket):
        return "a bucket name cannot be an IP address"
    if bucket.startswith("goog") or "google" in bucket:
        return "a bucket name cannot begin with goog nor contain google"
    return None


def parse_gs(uri, field, wildcards=False, need_object=False):
    """(bucket, object name or prefix) of a gs:// URI, checked as Google checks it; raises
    GcsError naming field. wildcards: *, ** and ? as the import methods take them."""
    if not isinstance(uri, str) or not uri:
        raise GcsError(field, "%s is required: a Cloud Storage URI gs://BUCKET/OBJECT" % field)
    if not uri.startswith("gs://"):
        raise GcsError(field, "%s must be a Cloud Storage URI gs://BUCKET/OBJECT, not %s"
                       % (field, shown(uri)))
    bucket, _, name = uri[len("gs://"):].partition("/")
    if not bucket:
        raise GcsError(field, "%s names no bucket: %s" % (field, shown(uri)))
    why = bucket_problem(bucket)
    if why:
        raise GcsError(field, "%s: invalid bucket name %s: %s" % (field, shown(bucket), why))
    if need_object and not name:
        raise GcsError(field, "%s names no object: gs://%s/OBJECT expected" % (field, bucket))
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise GcsError(field, "%s is not valid UTF-8" % field) from None
    if size > MAX_OBJECT_NAME:
        raise GcsError(field, "%s: an object name is at most %d bytes" % (field, MAX_OBJECT_NAME))
    if any(ord(c) < 0x20 or ord(c) == 0x7f for c in name):
        raise GcsError(field, "%s: an object name holds no control character" % field)
    segments = name.split("/")
    if segments and segments[-1] == "":
        segments.pop()   # a trailing slash: a prefix
    for seg in segments:
        # Cloud Storage refuses objects named "." or ".."; the root being a directory, every
        # segment is held to that, and an empty one ("a//b") is refused too.
        if seg in ("", ".", ".."):
            raise GcsError(field, "%s: invalid object name %s: no empty, \".\" or \"..\" "
                           "segment" % (field, shown(name)))
    if not wildcards and ("*" in name or "?" in name):
        raise GcsError(field, "%s takes no wildcard: %s" % (field, shown(uri)))
    if "**" in name:
        at = name.index("**")
        rest = name[at + 2:]
        if "/" in rest or "*" in rest or "?" in rest or "*" in name[:at] or "?" in name[:at]:
            raise GcsError(field, "%s: '**' is used once, at the end of the path, with no other "
                           "wildcard (an extension may follow it: gs://bucket/dir/**.dcm), "
                           "not %s" % (field, shown(uri)))
    return bucket, name


def wildcard_regex(name):
    """The regex of an import pattern: * any run of non-separators, ** anything, ? one
    non-separator (GoogleCloudHealthcareV1DicomGcsSource.uri)."""
    out, i = [], 0
    while i < len(name):
        if name.startswith("**", i):
            out.append(".*")
            i += 2
        elif name[i] == "*":
            out.append("[^/]*")
            i += 1
        elif name[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(name[i]))
            i += 1
    return re.compile("".join(out), re.S)


def parse_export_mime(value, field):
    """The transfer syntax an export's mimeType asks for (None: the bytes as stored); raises
    GcsError: 501 for the types Google serves and the emulator does not (rendered images, raw
    pixel data), 400 for the rest."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise GcsError(field, "%s must be a string" % field)
    main, _, rest = value.partition(";")
    main = main.strip().lower()
    params = {}
    for p in (x for x in rest.split(";") if x.strip()):
        k, eq, v = p.partition("=")
        if not eq:
            raise GcsError(field, "%s: malformed parameter %s" % (field, shown(p.strip())))
        params[k.strip().lower()] = v.strip().strip('"')
    if main in EXPORT_NOT_SERVED:
        raise GcsError(field, "%s %s: exporting %s is not served by the test bed's emulator "
                       "(application/dicom is)" % (field, shown(value), main), 501)
    if main != "application/dicom" or set(params) - {"transfer-syntax"}:
        raise GcsError(field, "%s %s is not supported: application/dicom[; transfer-syntax=TS], "
                       "image/jpeg, image/png or application/octet-stream" % (field, shown(value)))
    ts = params.get("transfer-syntax", "*")
    if ts == "*":
        return None
    if ts not in EXPORT_TRANSFER_SYNTAXES:
        raise GcsError(field, "%s: transfer-syntax %s is not supported: * or one of %s"
                       % (field, shown(ts), ", ".join(EXPORT_TRANSFER_SYNTAXES)))
    return ts


def parse_bq(uri, field):
    """(project, dataset, table) of bq://projectId.bqDatasetId.tableId; raises GcsError."""
    if not isinstance(uri, str) or len(uri) > 2000 or not BQ_RE.match(uri):
        raise GcsError(field, "%s must be a BigQuery table bq://PROJECT.DATASET.TABLE (up to 2000 "
                       "characters), not %s" % (field, shown(uri)))
    return BQ_RE.match(uri).groups()


# ---------------------------------------------------------------- the root

O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Root:
    """The directory standing for Cloud Storage. Paths are walked one segment at a time from
    a descriptor of the root, never through a symbolic link."""

    def __init__(self, path):
        os.makedirs(path, exist_ok=True)
        self.path = os.path.realpath(path)

    def open_dir(self, parts, create=False):
        """A descriptor (the caller's to close) of root/parts...; FileNotFoundError when a
        part is missing (and not create), OSError (ELOOP, ENOTDIR) when one is a link or a
        file."""
        fd = os.open(self.path, O_DIR)
        try:
            for part in parts:
                if create:
                    try:
                        os.mkdir(part, 0o755, dir_fd=fd)
                    except FileExistsError:
                        pass
                nxt = os.open(part, O_DIR, dir_fd=fd)
                os.close(fd)
                fd = nxt
        except BaseException:
            os.close(fd)
            raise
        return fd

    def bucket_exists(self, bucket):
        try:
            os.close(self.open_dir([bucket]))
            return True
        except OSError:
            return False

    def list(self, bucket, pattern):
        """Names of the regular files of a bucket matching an import pattern, sorted as Cloud
        Storage lists them. Raises OpError when the bucket does not exist."""
        try:
            root = self.open_dir([bucket])
        except OSError:
            raise OpError(NOT_FOUND, "Cloud Storage bucket not found: gs://%s" % bucket) from None
        regex = wildcard_regex(pattern)
        first = min([i for i in (pattern.find("*"), pattern.find("?")) if i >= 0] or [len(pattern)])
        fixed = pattern[:first].split("/")[:-1]        # the directories before any wildcard
        depth = None if "**" in pattern else pattern.count("/")
        out = []
        try:
            try:
                start = self.open_dir_at(root, fixed)
            except OSError:
                return out
            try:
                self._walk(start, "".join(p + "/" for p in fixed), regex, depth, out)
            finally:
                os.close(start)
        finally:
            os.close(root)
        return sorted(out)

    @staticmethod
    def open_dir_at(fd, parts):
        cur = os.dup(fd)
        try:
            for part in parts:
                nxt = os.open(part, O_DIR, dir_fd=cur)
                os.close(cur)
                cur = nxt
        except BaseException:
            os.close(cur)
            raise
        return cur

    def _walk(self, fd, prefix, regex, depth, out):
        with os.scandir(fd) as entries:
            found = sorted((e.name, e.is_dir(follow_symlinks=False),
                            e.is_file(follow_symlinks=False)) for e in entries)
        for name, is_dir, is_file in found:
            full = prefix + name
            if is_file and regex.fullmatch(full):
                if len(out) >= MAX_ITEMS:
                    raise OpError(INVALID_ARGUMENT, "more than %d files match" % MAX_ITEMS)
                out.append(full)
            elif is_dir and (depth is None or full.count("/") < depth):
                try:
                    sub = os.open(name, O_DIR, dir_fd=fd)
                except OSError:
                    continue   # replaced by a link or removed since listed
                try:
                    self._walk(sub, full + "/", regex, depth, out)
                finally:
                    os.close(sub)

    def open_object(self, bucket, name):
        """A binary file object of one regular file (a link, a directory, a FIFO are no
        objects): OSError otherwise."""
        parts = name.split("/")
        d = self.open_dir([bucket] + parts[:-1])
        try:
            fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=d)
        finally:
            os.close(d)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError("not a regular file")
        return os.fdopen(fd, "rb")

    def write_object(self, bucket, name, source):
        """Writes the file object source as root/bucket/name (directories made as needed):
        into a temporary file of the same directory, then renamed over the name, so a reader
        never sees half an object and a link in the way is replaced, not followed."""
        parts = name.split("/")
        if any(p in ("", ".", "..") for p in parts):
            raise OSError("invalid object name %s" % shown(name))
        d = self.open_dir([bucket] + parts[:-1], create=True)
        try:
            replace_in(d, parts[-1], source)
        finally:
            os.close(d)


def replace_in(dir_fd, name, source):
    """source's bytes as dir_fd/name, through a temporary file renamed over it."""
    tmp = ".%s.%s.tmp" % (name[:100], secrets.token_hex(6))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                 dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "wb") as out:
            while True:
                data = source.read(CHUNK)
                if not data:
                    break
                out.write(data)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        raise


# ---------------------------------------------------------------- Orthanc

class Orthanc:
    """The few calls of Orthanc's REST API the work needs (a connection per call: steps run
    on request threads)."""

    def __init__(self, url, auth=None):
        u = urllib.parse.urlsplit(url)
        self.host, self.port, self.root = u.hostname, u.port or 80, u.path.rstrip("/")
        self.headers = {}
        if auth:
            import base64
            self.headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()

    def call(self, method, path, body=None, headers=None, sink=None):
        """(status, body bytes, or None when copied into the file object sink)."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=600)
        try:
            h = dict(self.headers)
            h.update(headers or {})
            conn.request(method, self.root + path, body=body, headers=h)
            r = conn.getresponse()
            if sink is None or r.status != 200:
                return r.status, r.read()
            while True:
                data = r.read(CHUNK)
                if not data:
                    break
                sink.write(data)
            return r.status, None
        finally:
            conn.close()

    def json(self, method, path, body=None):
        status, data = self.call(method, path, body)
        try:
            return status, json.loads(data) if data else None
        except ValueError:
            return status, None

    def instance_id(self, sop):
        """Orthanc's id of the instance with this SOP Instance UID, or None."""
        _, found = self.json("POST", "/tools/lookup", sop.encode())
        for hit in found if isinstance(found, list) else []:
            if isinstance(hit, dict) and hit.get("Type") == "Instance":
                return hit["ID"]
        return None

    def fetch(self, oid, sink, transfer_syntax=None):
        """Copies the instance's bytes into sink (transcoded by Orthanc's /modify when
        transfer_syntax is given, its UIDs kept); an error string, or None."""
        if transfer_syntax:
            body = json.dumps({"Transcode": transfer_syntax, "Force": True,
                               "Keep": ["StudyInstanceUID", "SeriesInstanceUID",
                                        "SOPInstanceUID"]})
            status, data = self.call("POST", "/instances/%s/modify" % oid, body, sink=sink)
        else:
            status, data = self.call("GET", "/instances/%s/file" % oid, sink=sink)
        if status != 200:
            return "Orthanc answered %d: %s" % (status, printable(data or b""))
        return None

    def store(self, f, size):
        """POSTs one DICOM file (file object at its start) to /instances: (status, answer)."""
        status, data = self.call("POST", "/instances", f,
                                 {"Content-Type": "application/dicom",
                                  "Content-Length": str(size)})
        try:
            return status, json.loads(data) if data else None
        except ValueError:
            return status, {"raw": printable(data)}

    def sha256(self, oid):
        h = hashlib.sha256()

        class Sink:
            write = h.update
        status, _ = self.call("GET", "/instances/%s/file" % oid, sink=Sink())
        return h.hexdigest() if status == 200 else None


def printable(data, n=200):
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
    return "".join(c if c.isprintable() else "?" for c in text[:n])


def file_sha256(f):
    h = hashlib.sha256()
    f.seek(0)
    while True:
        data = f.read(CHUNK)
        if not data:
            break
        h.update(data)
    f.seek(0)
    return h.hexdigest()


def read_header(f):
    """The dataset of a DICOM file without its pixels; ValueError when it is no instance."""
    import pydicom   # slow import, only when work runs
    try:
        ds = pydicom.dcmread(f, force=True, stop_before_pixels=True, defer_size=4096)
        sop = str(ds.get("SOPInstanceUID") or "").strip("\0 ")
    except Exception as e:  # pydicom raises many kinds on garbage
        raise ValueError("not a DICOM instance: %s" % printable(str(e))) from None
    if not sop:
        raise ValueError("not a DICOM instance: no SOP Instance UID")
    return ds


# ---------------------------------------------------------------- de-identification config

def tag_of(text, field):
    """A DICOM tag (int) from a keyword ("PatientID") or 8 hex digits ("00100010")."""
    from pydicom.datadict import tag_for_keyword
    if isinstance(text, str) and re.fullmatch(r"[0-9A-Fa-f]{8}", text):
        return int(text, 16)
    tag = tag_for_keyword(text) if isinstance(text, str) else None
    if tag is None:
        raise GcsError(field, "%s: %s is no DICOM keyword nor tag (\"PatientID\" or \"00100010\")"
                       % (field, shown(text)))
    return tag


def known_fields(obj, fields, where):
    if not isinstance(obj, dict):
        raise GcsError(where, "%s must be an object" % where)
    for key in obj:
        if key not in fields:
            name = "%s.%s" % (where, key)
            raise GcsError(name, "Invalid JSON payload received. Unknown name %s: Cannot find "
                           "field." % shown(name))


class DeidPlan:
    """What a de-identification does to an instance (DeidentifyConfig.dicom), checked at the
    request: keep (a set of tags, or None), remove (a set), basic (the basic profile)."""

    def __init__(self, config, field="config"):
        from pydicom.datadict import tag_for_keyword
        config = {} if config is None else config
        known_fields(config, DEID_FIELDS, field)
        image = config.get("image") or {}
        known_fields(image, ("additionalInfoTypes", "excludeInfoTypes", "textRedactionMode"),
                     field + ".image")
        if image.get("textRedactionMode", TEXT_REDACTION_MODES_KEPT[0]) \
                not in TEXT_REDACTION_MODES_KEPT:
            raise GcsError(field + ".image.textRedactionMode",
                           "%s.image.textRedactionMode %s: redacting text in pixels is not "
                           "served by the test bed's emulator" % (field, shown(
                               image["textRedactionMode"])), 501)
        dicom = config.get("dicom") or {}
        where = field + ".dicom"
        known_fields(dicom, DICOM_CONFIG_FIELDS, where)
        chosen = [k for k in ("keepList", "removeList", "filterProfile") if k in dicom]
        if len(chosen) > 1:
            raise GcsError("%s.%s" % (where, chosen[1]), "%s: only one of keepList, removeList "
                           "and filterProfile can be set, not %s" % (where, " and ".join(chosen)))
        skip = dicom.get("skipIdRedaction", False)
        if not isinstance(skip, bool):
            raise GcsError(where + ".skipIdRedaction", "%s.skipIdRedaction must be true or false"
                           % where)
        if skip:
            # Every store shares one Orthanc: a copy under the source's UIDs would be the
            # source. The copies get new UIDs, as Google gives them by default.
            raise GcsError(where + ".skipIdRedaction", "%s.skipIdRedaction is not served by the "
                           "test bed's emulator: its stores share one Orthanc, where a copy under "
                           "the source's UIDs would collide with it" % where, 501)
        profile = dicom.get("filterProfile", PROFILES[0])
        if profile not in PROFILES:
            raise GcsError(where + ".filterProfile", "Invalid value at '%s.filter_profile' "
                           "(TYPE_ENUM), %s: one of %s" % (where, shown(profile),
                                                           ", ".join(PROFILES)))
        if profile == "DEIDENTIFY_TAG_CONTENTS":
            raise GcsError(where + ".filterProfile", "%s.filterProfile DEIDENTIFY_TAG_CONTENTS "
                           "(inspecting text) is not served by the test bed's emulator" % where,
                           501)
        self.keep, self.remove, self.basic = None, set(), False
        for name in ("keepList", "removeList"):
            if name not in dicom:
                continue
            lst = dicom[name]
            known_fields(lst, ("tags",), "%s.%s" % (where, name))
            tags = lst.get("tags", [])
            if not isinstance(tags, list):
                raise GcsError("%s.%s.tags" % (where, name), "%s.%s.tags must be a list of "
                               "strings" % (where, name))
            found = {tag_of(t, "%s.%s.tags" % (where, name)) for t in tags}
            if name == "keepList":
                self.keep = found
            else:
                self.remove = found
        if profile == "MINIMAL_KEEP_LIST_PROFILE":
            self.keep = set()
        elif profile == "ATTRIBUTE_CONFIDENTIALITY_BASIC_PROFILE":
            self.basic = True
        self.always = {tag_for_keyword(k) for k in ALWAYS_KEPT}
        self.identity = {tag_for_keyword(k) for k in IDENTITY}

    def apply(self, ds, new_uid):
        """De-identifies ds (a full pydicom dataset) in place; new_uid(old) -> the UID that
        replaces old (Google regenerates Study/Series/SOP Instance UIDs by default)."""
        from pydicom.datadict import tag_for_keyword
        if self.keep is not None:
            for elem in list(ds):
                if elem.tag not in self.keep and elem.tag not in self.always:
                    del ds[elem.tag]
        for tag in self.remove - self.identity:
            if tag in ds:
                del ds[tag]
        if self.basic:
            ds.remove_private_tags()
            for kw in BASIC_PROFILE_REMOVE:
                if kw in ds:
                    del ds[kw]
            for kw in BASIC_PROFILE_EMPTY:
                if kw in ds:
                    ds[tag_for_keyword(kw)].value = None
        for kw in UIDS_REGENERATED:
            if kw in ds:
                setattr(ds, kw, new_uid(str(ds[kw].value)))
        meta = getattr(ds, "file_meta", None)
        if meta is not None and "SOPInstanceUID" in ds:
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID


def uid_mapper(destination):
    """The destination's UID for a source UID: 2.25.<128 bits of SHA-256(destination, uid)>,
    the same for every instance (a study stays one study) and different per destination (the
    stores share one Orthanc)."""
    def new_uid(old):
        digest = hashlib.sha256(("%s\0%s" % (destination, old)).encode()).digest()
        return "2.25.%d" % int.from_bytes(digest[:16], "big")
    return new_uid


# ---------------------------------------------------------------- BigQuery rows

def bq_row(ds):
    """One instance's metadata as a BigQuery row the way Google's export shapes it: a column per
    standard data element named by its keyword, strings, numbers, DA as DATE, TM as TIME, DT as
    TIMESTAMP, PN as a record, SQ as repeated records, multi-valued elements as arrays. Binary
    (bulk) elements and private elements are left out (approximation)."""
    return bq_record(ds.to_json_dict(bulk_data_threshold=1 << 62))


def bq_record(js):
    from pydicom.datadict import keyword_for_tag
    row = {}
    for tag in sorted(js):
        attr = js[tag]
        group = int(tag[:4], 16)
        vr = attr.get("vr")
        if group % 2 == 1 or vr in BINARY_VRS or "Value" not in attr:
            continue
        kw = keyword_for_tag(int(tag, 16))
        if not kw:
            continue
        values = [bq_value(vr, v) for v in attr["Value"]]
        row[kw] = values if vr == "SQ" or len(values) != 1 else values[0]
    return row


def bq_value(vr, v):
    if vr == "SQ":
        return bq_record(v or {})
    if vr == "PN":
        return dict(v) if isinstance(v, dict) else {"Alphabetic": str(v)}
    if not isinstance(v, str):
        return v
    if vr == "DA" and re.fullmatch(r"\d{8}", v):
        return "%s-%s-%s" % (v[:4], v[4:6], v[6:])
    m = re.fullmatch(r"(\d\d)(\d\d)?(\d\d)?(?:\.(\d{1,6}))?", v) if vr == "TM" else None
    if m:
        return "%s:%s:%s%s" % (m.group(1), m.group(2) or "00", m.group(3) or "00",
                               "." + m.group(4).ljust(6, "0") if m.group(4) else "")
    m = re.fullmatch(r"(\d{4})(\d\d)(\d\d)(\d\d)(\d\d)(\d\d)(?:\.(\d{1,6}))?([+-]\d{4})?", v) \
        if vr == "DT" else None
    if m:
        g = m.groups()
        zone = g[7] or "+0000"
        return "%s-%s-%sT%s:%s:%s%s%s:%s" % (g[0], g[1], g[2], g[3], g[4], g[5],
                                             "." + g[6].ljust(6, "0") if g[6] else "",
                                             zone[:3], zone[3:])
    return v


# ---------------------------------------------------------------- the work

class Work:
    """The work of one operation: items done in order, up to a target the polls set
    (advance). Subclasses say what one item is (one), and may prepare (start), conclude
    (finish), clean up after a cancel (cleanup) and choose the final error (final_error).
    ctx: {"state": the emulator's State, "root": Root, "orthanc": Orthanc}."""

    noun = "items"

    def __init__(self, ctx, items):
        self.ctx, self.items = ctx, items
        self.done = self.success = self.failure = 0
        self.finished = self.aborted = self.started = False
        self.error = None
        self.log = []
        self.lock = threading.Lock()

    # -- what subclasses define

    def start(self):
        pass

    def one(self, item):
        """Does one item: None on success, else why it failed (printable text)."""
        raise NotImplementedError

    def finish(self):
        pass

    def cleanup(self):
        pass

    def final_error(self):
        return None

    def describe(self, item):
        return str(item)

    # -- driving

    def counter(self):
        return {"success": self.success, "failure": self.failure,
                "pending": len(self.items) - self.done}

    def advance(self, target, cancelled):
        """Does items until `target` of them are done (or all, or a cancel); the last one done
        finishes the work. cancelled(): True once the operation is cancelled."""
        with self.lock:
            if self.finished or self.aborted:
                return
            try:
                if not self.started:
                    self.started = True
                    self.start()
                while self.done < min(target, len(self.items)) and not cancelled():
                    item = self.items[self.done]
                    try:
                        why = self.one(item)
                    except OSError as e:
                        why = "%s: %s" % (type(e).__name__, e.strerror or e)
                    except Exception as e:  # the emulator's own bug: a failed item, logged
                        traceback.print_exc()
                        why = "emulator error: %s" % e
                    self.done += 1
                    if why is None:
                        self.success += 1
                    else:
                        self.failure += 1
                        if len(self.log) < MAX_LOGGED:
                            self.log.append({"resource": self.describe(item),
                                             "error": {"code": INVALID_ARGUMENT,
                                                       "message": printable(why, 500)}})
                if not cancelled() and self.done >= len(self.items):
                    self.finish()
                    self.error = self.final_error()
                    self.finished = True
            except (OpError, OSError) as e:
                # Before the first item or after the last (a table that cannot be written,
                # a link in the way): the operation ends with the error.
                if isinstance(e, OpError):
                    self.error = {"code": e.code, "message": e.message}
                else:
                    self.error = {"code": INTERNAL, "message": "%s: %s" % (
                        type(e).__name__, printable(e.strerror or str(e)))}
                self.cleanup()
                self.finished = True
            if cancelled():
                self._abort()

    def try_abort(self):
        """After a cancel: cleans up now unless a step runs, which then does it itself."""
        if self.lock.acquire(blocking=False):
            try:
                self._abort()
            finally:
                self.lock.release()

    def _abort(self):
        if not self.aborted and not self.finished:
            self.aborted = True
            self.cleanup()

    def bump(self, key, n=1):
        st = self.ctx["state"]
        with st.lock:
            st.stats[key] = st.stats.get(key, 0) + n

    def hold(self, store, sop):
        st = self.ctx["state"]
        with st.lock:
            st.holdings.setdefault(store, {})[sop] = True


class ImportWork(Work):
    """dicomStores.import: each matching object read, checked to be a DICOM instance, and
    stored into Orthanc through its REST API (/instances), for the store."""

    noun = "files"

    def __init__(self, ctx, store, bucket, names, check_conflicts):
        super().__init__(ctx, names)
        self.store, self.bucket, self.check_conflicts = store, bucket, check_conflicts

    def describe(self, item):
        return "gs://%s/%s" % (self.bucket, item)

    def one(self, name):
        orthanc = self.ctx["orthanc"]
        with self.ctx["root"].open_object(self.bucket, name) as f:
            self.bump("gcs_objects_read")
            size = os.fstat(f.fileno()).st_size
            try:
                sop = str(read_header(f).SOPInstanceUID).strip("\0 ")
            except ValueError as e:
                return str(e)
            # As a STOW: a SOP Instance UID held with other bytes is a conflict (Orthanc
            # would store it beside the other when its study or series differs); held with
            # the same bytes, a success.
            held = orthanc.instance_id(sop) if self.check_conflicts else None
            if held is not None:
                if orthanc.sha256(held) != file_sha256(f):
                    return "an instance with the same SOP Instance UID already exists with " \
                           "different content"
            else:
                f.seek(0)
                status, answer = orthanc.store(f, size)
                if status != 200 or not isinstance(answer, dict) or "ID" not in answer:
                    return "Orthanc refused the instance (%d): %s" % (status, printable(
                        json.dumps(answer)))
        self.hold(self.store, sop)
        return None

    def final_error(self):
        # Google logs each file's error to Cloud Logging ("Errors are logged to Cloud
        # Logging", dicomStores.import in the v1 reference) and, when some failed, ends the
        # operation with an error while the counter carries the numbers (the way its FHIR
        # import attaches ImportResourcesErrorDetails "when the operation finishes with some
        # failure"). The code and the wording here are the emulator's: Google's own message
        # is not documented.
        if self.failure:
            return {"code": INVALID_ARGUMENT,
                    "message": "%d of %d files failed to import; see the logs of the operation "
                               "(metadata.logsUrl) for each file's error"
                               % (self.failure, len(self.items))}
        return None


class InstanceWork(Work):
    """Work over a store's instances (items: SOP Instance UIDs, or (store, sop) pairs)."""

    noun = "instances"

    def fetch(self, sop, sink, transfer_syntax=None):
        """Copies the instance into sink; an error string, or None."""
        oid = self.ctx["orthanc"].instance_id(sop)
        if oid is None:
            return "instance %s is no longer in Orthanc (deleted through another store?)" % sop
        return self.ctx["orthanc"].fetch(oid, sink, transfer_syntax)

    def final_error(self):
        # As import (above): failures end the operation with an error (the emulator's
        # wording), each instance's error in the logs.
        if self.failure:
            return {"code": INVALID_ARGUMENT,
                    "message": "%d of %d instances failed to export; see the logs of the "
                               "operation (metadata.logsUrl)" % (self.failure, len(self.items))}
        return None


class ExportGcsWork(InstanceWork):
    """dicomStores.export to Cloud Storage: each instance as <prefix>/<study>/<series>/
    <instance>.dcm (GoogleCloudHealthcareV1DicomGcsDestination.mimeType's layout)."""

    def __init__(self, ctx, sops, bucket, prefix, transfer_syntax):
        super().__init__(ctx, sops)
        self.bucket, self.prefix, self.transfer_syntax = bucket, prefix, transfer_syntax

    def start(self):
        # "The user is responsible for creating the Cloud Storage bucket referenced in
        # uriPrefix."
        if not self.ctx["root"].bucket_exists(self.bucket):
            raise OpError(NOT_FOUND, "Cloud Storage bucket not found: gs://%s" % self.bucket)

    def one(self, sop):
        with tempfile.TemporaryFile(dir=self.ctx["state"].args.tmp) as spool:
            why = self.fetch(sop, spool, self.transfer_syntax)
            if why:
                return why
            spool.seek(0)
            try:
                ds = read_header(spool)
            except ValueError as e:
                return str(e)
            uids = [str(ds.get(k) or "").strip("\0 ") for k in ("StudyInstanceUID",
                                                                 "SeriesInstanceUID")] + [sop]
            # The names come from the data: only UIDs (digits and dots) become path segments.
            bad = [u for u in uids if len(u) > 64 or not UID_RE.match(u)]
            if bad:
                return "cannot name the object: %s is not a UID" % shown(bad[0])
            name = "%s%s/%s/%s.dcm" % (self.prefix, uids[0], uids[1], uids[2])
            spool.seek(0)
            self.ctx["root"].write_object(self.bucket, name, spool)
            self.bump("gcs_objects_written")
        return None


class ExportBigQueryWork(InstanceWork):
    """dicomStores.export to BigQuery: one JSON line per instance in <root>/_bigquery/
    P.D.T.jsonl. Rows go to a temporary file renamed over the table (WRITE_TRUNCATE, and an
    empty or new table) or appended to it (WRITE_APPEND) once every instance is done, so a
    cancelled export leaves the table as it was."""

    def __init__(self, ctx, sops, table, disposition):
        super().__init__(ctx, sops)
        self.table, self.disposition = table, disposition
        self.file = table + ".jsonl"
        self.tmp = None

    def table_dir(self):
        return self.ctx["root"].open_dir([BIGQUERY_DIR], create=True)

    def start(self):
        d = self.table_dir()
        try:
            try:
                fd = os.open(self.file, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=d)
            except FileNotFoundError:
                fd = None
            if fd is not None:
                with os.fdopen(fd, "rb") as f:
                    rows = any(line.strip() for line in f)
                # force=false: an error when the table exists; WRITE_EMPTY: only when it
                # holds rows (the "Exporting DICOM metadata to BigQuery" how-to).
                if self.disposition == "FORCE_FALSE" or \
                        self.disposition == "WRITE_EMPTY" and rows:
                    raise OpError(FAILED_PRECONDITION, "BigQuery table bq://%s already exists%s: "
                                  "set writeDisposition WRITE_TRUNCATE or WRITE_APPEND (or force)"
                                  % (self.table, " and holds rows" if rows else ""))
            self.tmp = ".%s.%s.tmp" % (self.file, secrets.token_hex(6))
            os.close(os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW |
                             os.O_CLOEXEC, 0o644, dir_fd=d))
        finally:
            os.close(d)

    def one(self, sop):
        with tempfile.TemporaryFile(dir=self.ctx["state"].args.tmp) as spool:
            why = self.fetch(sop, spool)
            if why:
                return why
            spool.seek(0)
            try:
                row = bq_row(read_header(spool))
            except ValueError as e:
                return str(e)
        line = (json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n").encode()
        d = self.table_dir()
        try:
            fd = os.open(self.tmp, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC,
                         dir_fd=d)
        finally:
            os.close(d)
        with os.fdopen(fd, "ab") as f:
            f.write(line)
        self.bump("bigquery_rows_written")
        return None

    def finish(self):
        d = self.table_dir()
        try:
            if self.disposition == "WRITE_APPEND":
                fd = os.open(self.file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW |
                             os.O_CLOEXEC, 0o644, dir_fd=d)
                src = os.open(self.tmp, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=d)
                with os.fdopen(fd, "ab") as out, os.fdopen(src, "rb") as f:
                    while True:
                        data = f.read(CHUNK)
                        if not data:
                            break
                        out.write(data)
                os.unlink(self.tmp, dir_fd=d)
            else:
                os.rename(self.tmp, self.file, src_dir_fd=d, dst_dir_fd=d)
            self.tmp = None
        finally:
            os.close(d)

    def cleanup(self):
        if self.tmp:
            try:
                d = self.table_dir()
            except OSError:
                return
            try:
                os.unlink(self.tmp, dir_fd=d)
            except OSError:
                pass
            finally:
                os.close(d)
            self.tmp = None


class DeidentifyWork(InstanceWork):
    """dicomStores.deidentify / datasets.deidentify: each (source store, destination store,
    SOP Instance UID) read from Orthanc, de-identified (DeidPlan) under UIDs of the destination,
    stored into Orthanc, and held by the destination store."""

    def __init__(self, ctx, items, plan):
        super().__init__(ctx, items)
        self.plan = plan
        self.mappers = {}

    def describe(self, item):
        return "%s/dicomWeb/instances/%s" % (item[0], item[2])

    def one(self, item):
        import pydicom
        _, dest, sop = item
        buf = io.BytesIO()
        why = self.fetch(sop, buf)
        if why:
            return why
        buf.seek(0)
        try:
            ds = pydicom.dcmread(buf, force=True)
        except Exception as e:  # pydicom raises many kinds on garbage
            return "not a DICOM instance: %s" % printable(str(e))
        new_uid = self.mappers.setdefault(dest, uid_mapper(dest))
        self.plan.apply(ds, new_uid)
        out = io.BytesIO()
        try:
            pydicom.dcmwrite(out, ds, write_like_original=False)
        except Exception as e:  # an element pydicom cannot write back
            return "cannot write the de-identified instance: %s" % printable(str(e))
        size = out.tell()
        out.seek(0)
        status, answer = self.ctx["orthanc"].store(out, size)
        if status != 200 or not isinstance(answer, dict) or "ID" not in answer:
            return "Orthanc refused the de-identified instance (%d)" % status
        self.hold(dest, str(ds.SOPInstanceUID))
        self.bump("instances_deidentified")
        return None

    def final_error(self):
        # Google may end a de-identification as a success while instances failed: the
        # counter's failure says so (issue 16; the operation's response is a summary).
        return None


def read_config_object(root, uri, field):
    """The DeidentifyConfig JSON of a gcsConfigUri object; raises GcsError."""
    bucket, name = parse_gs(uri, field, need_object=True)
    try:
        with root.open_object(bucket, name) as f:
            data = f.read(CONFIG_CAP + 1)
    except OSError:
        raise GcsError(field, "%s: cannot read %s: no such object" % (field, shown(uri))) from None
    if len(data) > CONFIG_CAP:
        raise GcsError(field, "%s: %s is over %d bytes" % (field, shown(uri), CONFIG_CAP))
    try:
        config = json.loads(data)
    except ValueError as e:
        raise GcsError(field, "%s: %s is not JSON: %s" % (field, shown(uri), e)) from None
    return config
