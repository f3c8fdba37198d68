#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Start one Debian Orthanc (with only the DICOMweb plugin) for the tests.

Orthanc cannot be told which address to listen on: it binds every interface.
So this launcher refuses to run outside the test bed's private network
namespace (HC_TEST_NETNS=1) unless --allow-outside-netns is given.

It writes a config into a work directory (temporary unless --workdir), picks a
free port (--port 0), starts Orthanc, waits until GET /system answers, prints
the root URL alone on the first line of stdout, then stays in the foreground
until SIGTERM/SIGINT, when it stops Orthanc and removes what it created.
If Orthanc fails to start, its log goes to stderr and the exit code is 1.
"""

import argparse
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def free_port():
    """A port that was free a moment ago on 127.0.0.1 (Orthanc binds it next)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(workdir, port, auth, extra):
    storage = os.path.join(workdir, "storage")
    index = os.path.join(workdir, "index")
    os.makedirs(storage, exist_ok=True)
    os.makedirs(index, exist_ok=True)
    cfg = {
        "Name": "hc-test",
        "HttpPort": port,
        "HttpServerEnabled": True,
        "StorageDirectory": storage,
        "IndexDirectory": index,
        "StorageCompression": False,
        "RemoteAccessAllowed": False,
        "DicomServerEnabled": False,
        "AuthenticationEnabled": bool(auth),
        "HttpDescribeErrors": True,
        "KeepAlive": True,
        "TcpNoDelay": True,
        "HttpTimeout": 120,
        "HttpThreadsCount": 16,
        "OverwriteInstances": False,
        "Plugins": [DICOMWEB_PLUGIN],
        "DicomWeb": {
            "Enable": True,
            "Root": "/dicom-web/",
            "EnableWado": True,
            "Ssl": False,
        },
    }
    if auth:
        user, _, password = auth.partition(":")
        cfg["RegisteredUsers"] = {user: password}
    cfg.update(extra)
    path = os.path.join(workdir, "orthanc.json")
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2)
    return path


def answers(url, auth, timeout=1.0):
    req = urllib.request.Request(url + "/system")
    if auth:
        req.add_header("Authorization",
                       "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def tail(path, n=60):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError as e:
        return "(no log: %s)\n" % e


def start(args, workdir):
    """Start Orthanc; return (process, url) or exit 1 with its log on stderr."""
    log_path = os.path.join(workdir, "orthanc.log")
    attempts = 3 if args.port == 0 else 1
    for _ in range(attempts):
        port = args.port or free_port()
        cfg = write_config(workdir, port, args.auth, json.loads(args.extra_config))
        log = open(log_path, "ab")
        argv = [ORTHANC] + (["--verbose"] if args.verbose else []) + [cfg]
        proc = subprocess.Popen(argv,
                                stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=workdir)
        log.close()
        url = "http://127.0.0.1:%d" % port
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if answers(url, args.auth):
                return proc, url
            time.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            sys.stderr.write("orthanc.py: Orthanc did not answer on %s within %.0f s\n"
                             % (url, args.timeout))
            break
        sys.stderr.write("orthanc.py: Orthanc exited with %s on port %d\n"
                         % (proc.returncode, port))
    sys.stderr.write("---- Orthanc log (%s) ----\n%s---- end of log ----\n"
                     % (log_path, tail(log_path)))
    sys.exit(1)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=0, help="HTTP port, 0 = a free one")
    p.add_argument("--workdir", help="config, storage and log here (kept); default a temp dir (removed)")
    p.add_argument("--auth", metavar="USER:PASSWORD", help="turn HTTP Basic authentication on")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for Orthanc to answer")
    p.add_argument("--extra-config", default="{}", help="JSON object merged into the config")
    p.add_argument("--allow-outside-netns", action="store_true",
                   help="run even outside the test bed's network namespace")
    p.add_argument("--verbose", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()

    if os.environ.get("HC_TEST_NETNS") != "1" and not args.allow_outside_netns:
        sys.stderr.write("orthanc.py: Orthanc listens on every interface; run inside "
                         "spec/support/testbed (or pass --allow-outside-netns)\n")
        sys.exit(2)

    own_dir = args.workdir is None
    workdir = tempfile.mkdtemp(prefix="hc-orthanc-", dir=os.environ.get("HC_TEST_TMP")) \
        if own_dir else args.workdir
    os.makedirs(workdir, exist_ok=True)

    proc = None

    def stop(*_):
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if own_dir:
            shutil.rmtree(workdir, ignore_errors=True)

    def on_signal(signum, _frame):
        # Only unwind here: stop() runs in the finally below, once Popen.wait()
        # has released its lock (waiting from a handler would deadlock).
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    try:
        proc, url = start(args, workdir)
        sys.stdout.write(url + "\n")
        sys.stdout.write(json.dumps({"url": url, "workdir": workdir, "pid": proc.pid,
                                     "log": os.path.join(workdir, "orthanc.log")}) + "\n")
        sys.stdout.flush()
        rc = proc.wait()
        sys.stderr.write("orthanc.py: Orthanc exited with %d\n%s" % (rc, tail(os.path.join(workdir, "orthanc.log"), 20)))
        sys.exit(1)
    finally:
        stop()


if __name__ == "__main__":
    main()
