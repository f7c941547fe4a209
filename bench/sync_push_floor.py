"""The least a synchronous, standard-library-only client does for a repeat push: a measuring
stick for ``bench/startup.py``, not a client (no auth, no TLS, no retries, no fallback to an
upload: anything but the expected answers is an error).

    python bench/sync_push_floor.py LAYOUT TAG HOST:PORT REPOSITORY LOCATIONS

reads ``LAYOUT``'s ``index.json`` and the manifest tagged ``TAG`` (its digest verified), looks up
each blob in ocikit's blob location record ``LOCATIONS`` (SQLite), mounts every blob into
``REPOSITORY`` from the newest repository recorded for it, and PUTs the manifest as ``v1``: the
requests ocikit's repeat push sends, on one keep-alive connection through ``http.client``.
Only what that needs is imported, so its time is a floor for any such client in CPython.
"""

import argparse
import hashlib
import http.client
import json
import sqlite3
import urllib.parse

parser = argparse.ArgumentParser()
for name in ("layout", "tag", "host", "repository", "locations"):
    parser.add_argument(name)
args = parser.parse_args()
with open(f"{args.layout}/index.json", "rb") as handle:
    index = json.load(handle)
TAG_KEY = "org.opencontainers.image.ref.name"
top = next(m for m in index["manifests"] if m.get("annotations", {}).get(TAG_KEY) == args.tag)
algorithm, _, encoded = top["digest"].partition(":")
with open(f"{args.layout}/blobs/{algorithm}/{encoded}", "rb") as handle:
    raw = handle.read()
if hashlib.new(algorithm, raw).hexdigest() != encoded:
    raise SystemExit("the manifest does not match its digest")
manifest = json.loads(raw)
record = sqlite3.connect(args.locations)
connection = http.client.HTTPConnection(args.host)
for blob in [manifest["config"], *manifest["layers"]]:
    (source,) = record.execute(
        "SELECT repository FROM locations WHERE registry = ? AND digest = ? ORDER BY seen DESC LIMIT 1",
        (args.host, blob["digest"]),
    ).fetchone()
    query = urllib.parse.urlencode({"mount": blob["digest"], "from": source})
    connection.request("POST", f"/v2/{args.repository}/blobs/uploads/?{query}", body=b"")
    response = connection.getresponse()
    response.read()
    if response.status != 201:
        raise SystemExit(f"mount {blob['digest']}: {response.status}")
headers = {"Content-Type": top["mediaType"]}
connection.request("PUT", f"/v2/{args.repository}/manifests/v1", body=raw, headers=headers)
response = connection.getresponse()
response.read()
if response.status != 201:
    raise SystemExit(f"manifest: {response.status}")
print(top["digest"])
