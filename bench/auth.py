#!/usr/bin/env python3
"""What access control costs: ``ocikit serve`` with and without it, CNCF distribution v3.1.1
with and without its htpasswd auth, side by side in one run.

a) manifest GET by tag, requests/s with 64 connections (``wrk``), on four servers running at
   once: ocikit open; ocikit with ``--htpasswd`` and a 100-rule ``--policy`` (the rule that
   allows the benchmark user is the last one), requests carrying a bearer token fetched once
   (what every client does); distribution open; distribution with ``auth: htpasswd`` (Basic
   credentials on every request: its only built-in mode without a separate token server).
   Each pair is measured alternately, ``--rounds`` times, best round kept; the figures are
   the ratios auth / open of each registry.
b) token issuance: ``GET /token`` with Basic credentials and a pull scope, requests/s
   (``wrk``, 16 connections).
c) the authorization check alone, in this process: microseconds per request for the access
   control the same settings build (a cached bearer token, the 100-rule policy), header
   parsing included; steadier than a) on a busy machine.

Run from the repository root after ``make test-deps``::

    .venv/bin/python bench/auth.py              # about a minute
    .venv/bin/python bench/auth.py --quick      # smoke run
    .venv/bin/python bench/auth.py --json

Needs ``wrk``, ``htpasswd`` (Debian apache2-utils) and distribution v3.1.1's ``registry``
binary: ``--distribution PATH`` or ``$OCIKIT_DISTRIBUTION_V3`` (the official release binary).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from registry import (  # the sibling benchmark's servers and helpers
    OCI_MANIFEST,
    REPOSITORY,
    TAG,
    Server,
    find_tool,
    free_port,
    push_image,
    request,
)

DEFAULT_DISTRIBUTION = "/work/shared/tools/distribution-v3/registry"
USER, PASSWORD = "bench", "bench-password"
WORKERS = 2
RULES = 100


def ocikit_argv(port: int, root: Path, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "ocikit.cli.main", "serve", "--listen", f"127.0.0.1:{port}",
            "--root", str(root), "--workers", str(WORKERS), *extra]  # fmt: skip


def source_env() -> dict[str, str]:
    env = dict(os.environ)
    src = Path(__file__).resolve().parent.parent / "src"
    if (src / "ocikit").is_dir():  # run the checkout this script belongs to
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
    return env


def wait_until_answering(server: Server, argv: list[str], env: dict[str, str] | None = None) -> None:
    """Start and wait for any HTTP answer (401 is an answer: auth is on)."""
    with open(server.log, "ab") as sink:
        server.process = subprocess.Popen(
            argv, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited:\n{server.log_tail()}")
        try:
            request(server, "GET", "/v2/")
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{server.name} did not answer:\n{server.log_tail()}")


def policy_text() -> str:
    """99 rules for other teams, then the one that lets the benchmark user pull."""
    rules = [
        f'[[rule]]\nusers = ["user-{i}", "group:team-{i}"]\nrepositories = ["team-{i}/**", "shared-{i}/*"]\n'
        f'actions = ["pull", "push"]\n'
        for i in range(RULES - 1)
    ]
    groups = "[groups]\n" + "".join(f'team-{i} = ["member-{i}"]\n' for i in range(RULES - 1))
    last = f'[[rule]]\nusers = ["{USER}"]\nrepositories = ["bench/**"]\nactions = ["pull"]\n'
    return groups + "\n".join(rules) + last


def distribution_config(path: Path, port: int, root: Path, htpasswd: Path | None) -> None:
    auth = f"auth:\n  htpasswd:\n    realm: bench\n    path: {htpasswd}\n" if htpasswd else ""
    path.write_text(
        "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: false\n"
        f"storage:\n  cache:\n    blobdescriptor: inmemory\n  filesystem:\n    rootdirectory: {root}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n" + auth
    )


def start_pair(workdir: Path, name: str, start: Any) -> tuple[Server, Server]:
    """An open server, the image pushed to it, then an authenticated one on a copy of its root."""
    open_server = start(workdir, f"{name}", None)
    push_image(open_server, os.urandom(4096))
    shutil.copytree(open_server.root, workdir / f"{name}-auth-root")
    return open_server, start(workdir, f"{name}-auth", workdir / f"{name}-auth-root")


def wrk_rate(wrk: str, url: str, seconds: float, connections: int, headers: dict[str, str]) -> dict[str, Any]:
    argv = [wrk, f"-t{min(2, os.cpu_count() or 1)}", f"-c{connections}", f"-d{max(1, round(seconds))}s"]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    output = subprocess.run([*argv, url], capture_output=True, text=True, check=True).stdout
    rate = float(output.split("Requests/sec:")[1].split()[0])
    bad = output.split("Non-2xx or 3xx responses:")[1].split()[0] if "Non-2xx" in output else "0"
    if int(bad):
        raise RuntimeError(f"{url}: {bad} non-2xx answers")
    return {"requests_per_s": rate}


def authorization_cost(
    htpasswd: Path, policy: Path, root: Path, rounds: int = 5, calls: int = 50_000
) -> float:
    """Best round's microseconds per ``AccessControl`` call for a manifest GET."""
    import asyncio

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    from ocikit.registry import Settings
    from ocikit.registry.auth import access_from_settings
    from ocikit.registry.http import Request

    configured = access_from_settings(Settings(root=str(root), htpasswd=str(htpasswd), policy=str(policy)))
    assert configured is not None
    assert configured.token_endpoint is not None
    access = [{"type": "repository", "name": REPOSITORY, "actions": ["pull"]}]
    token = configured.token_endpoint.issuer.access_token(USER, access)
    headers = [
        (b"host", b"127.0.0.1:5000"),
        (b"accept", OCI_MANIFEST.encode()),
        (b"authorization", f"Bearer {token}".encode()),
    ]
    path = f"/v2/{REPOSITORY}/manifests/{TAG}"

    async def measure() -> float:
        best = float("inf")
        for _ in range(rounds):
            started = time.perf_counter()
            for _ in range(calls):
                scope = {
                    "type": "http",
                    "method": "GET",
                    "path": path,
                    "headers": headers,
                    "client": ("127.0.0.1", 1),
                }
                await configured.access(Request(scope, None), REPOSITORY, "pull")  # type: ignore[arg-type]
            best = min(best, (time.perf_counter() - started) / calls)
        return best * 1e6

    return asyncio.run(measure())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument(
        "--distribution", default=os.environ.get("OCIKIT_DISTRIBUTION_V3", DEFAULT_DISTRIBUTION)
    )
    parser.add_argument("--tmpdir", default=None)
    args = parser.parse_args(argv)
    wrk, htpasswd_tool = find_tool("wrk"), find_tool("htpasswd")
    if wrk is None or htpasswd_tool is None or not os.access(args.distribution, os.X_OK):
        print("needs wrk, htpasswd (apache2-utils) and distribution v3's registry binary", file=sys.stderr)
        return 2
    seconds, warmup = (2.0, 1.0) if args.quick else (8.0, 2.0)
    rounds = args.rounds or (1 if args.quick else 3)
    workdir = Path(tempfile.mkdtemp(prefix="ocikit-bench-auth-", dir=args.tmpdir))
    servers: list[Server] = []
    try:
        htpasswd = workdir / "htpasswd"
        subprocess.run(
            [htpasswd_tool, "-Bbc", str(htpasswd), USER, PASSWORD], check=True, capture_output=True
        )
        policy = workdir / "policy.toml"
        policy.write_text(policy_text())

        def start_ocikit(where: Path, name: str, auth_root: Path | None) -> Server:
            port = free_port()
            root = auth_root or where / name
            server = Server(name, "127.0.0.1", port, root, where / f"{name}.log")
            extra = ["--htpasswd", str(htpasswd), "--policy", str(policy)] if auth_root else []
            wait_until_answering(server, ocikit_argv(port, root, extra), source_env())
            servers.append(server)
            return server

        def start_distribution(where: Path, name: str, auth_root: Path | None) -> Server:
            port = free_port()
            root = auth_root or where / name
            root.mkdir(exist_ok=True)
            server = Server(name, "127.0.0.1", port, root, where / f"{name}.log")
            config = where / f"{name}.yml"
            distribution_config(config, port, root, htpasswd if auth_root else None)
            wait_until_answering(server, [args.distribution, "serve", str(config)])
            servers.append(server)
            return server

        ocikit_open, ocikit_auth = start_pair(workdir, "ocikit", start_ocikit)
        dist_open, dist_auth = start_pair(workdir, "distribution", start_distribution)
        basic = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        token_path = f"/token?service=ocikit&scope=repository:{REPOSITORY}:pull"
        status, _, body = request(ocikit_auth, "GET", token_path, headers={"Authorization": basic})
        assert status == 200, body
        bearer = "Bearer " + json.loads(body)["token"]
        manifest_path = f"/v2/{REPOSITORY}/manifests/{TAG}"
        plans = {
            ocikit_open.name: (ocikit_open, {}),
            ocikit_auth.name: (ocikit_auth, {"Authorization": bearer}),
            dist_open.name: (dist_open, {}),
            dist_auth.name: (dist_auth, {"Authorization": basic}),
        }
        best: dict[str, float] = {}
        for _ in range(rounds):
            for name, (server, headers) in plans.items():
                url = server.url + manifest_path
                wrk_rate(wrk, url, warmup, 64, {"Accept": OCI_MANIFEST, **headers})
                rate = wrk_rate(wrk, url, seconds, 64, {"Accept": OCI_MANIFEST, **headers})["requests_per_s"]
                best[name] = max(best.get(name, 0.0), rate)
        token_url = ocikit_auth.url + token_path
        wrk_rate(wrk, token_url, warmup, 16, {"Authorization": basic})
        tokens = wrk_rate(wrk, token_url, seconds, 16, {"Authorization": basic})["requests_per_s"]
        check_us = authorization_cost(
            htpasswd, policy, workdir / "in-process", calls=5_000 if args.quick else 50_000
        )
        report = {
            "mode": "quick" if args.quick else "full",
            "rounds": rounds,
            "seconds": seconds,
            "manifest_get": best,
            "ocikit_auth_ratio": best["ocikit-auth"] / best["ocikit"],
            "distribution_auth_ratio": best["distribution-auth"] / best["distribution"],
            "ocikit_auth_vs_distribution_auth": best["ocikit-auth"] / best["distribution-auth"],
            "token_issuance_per_s": tokens,
            "authorization_check_us": check_us,
            "targets": {
                "ocikit_auth_ratio >= 0.9": best["ocikit-auth"] / best["ocikit"] >= 0.9,
                "token_issuance >= 200/s": tokens >= 200,
            },
        }
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for name, rate in report["manifest_get"].items():
            print(f"manifest GET by tag  {name:<18} {rate:10.0f} req/s")
        print(f"ocikit auth / open        {report['ocikit_auth_ratio']:.2f}x   (target >= 0.9)")
        print(f"distribution auth / open  {report['distribution_auth_ratio']:.2f}x")
        print(f"ocikit auth / distribution auth  {report['ocikit_auth_vs_distribution_auth']:.1f}x")
        print(f"token issuance            {tokens:10.0f} tokens/s (target >= 200)")
        print(f"authorization check       {check_us:10.1f} us/request (in-process)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
