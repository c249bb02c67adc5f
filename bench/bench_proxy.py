"""WADO-RS frames through the DICOMweb proxy vs directly from Orthanc, on the same files.

Self-contained: starts its own Orthanc (`tests.support.orthanc.make_orthanc`), a temporary
SQLite database, the Django app under granian (1 worker, 4 threads, DEBUG off), stores a
64-slice 256x256 CT series, indexes it in a project, then fetches every frame `--rounds`
times through the proxy (token auth) and directly (Orthanc basic auth), interleaved and in
alternating order, with Cornerstone3D's Accept header. Prints p50/p95 per path and the
ratio (goal: p95 proxy / direct <= 1.1), first one request at a time, then with
`--concurrency` requests in flight per path (Cornerstone3D's loader keeps about 6), the
paths taking turns round by round.

The index holds each instance's transfer syntax, as after the first view of a series (the
proxy learns it from Orthanc once per instance); `--learn-transfer-syntax` leaves it
blank so the first round measures that. `--auth session` authenticates with a Django
session cookie (the browser) instead of a token.

    .venv/bin/python bench/bench_proxy.py [--rounds 5] [--slices 64] [--size 256]
        [--concurrency 6] [--auth token|session] [--learn-transfer-syntax]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ACCEPT = "multipart/related; type=application/octet-stream; transfer-syntax=*"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def report(
    title: str,
    times: dict[str, list[float]],
    sizes: dict[str, int],
    throughput: dict[str, float] | None = None,
) -> None:
    """p50/p95/mean per path and the proxy/direct ratios."""
    print(f"\n{title}")
    print(f"{'path':<8} {'p50 ms':>8} {'p95 ms':>8} {'mean ms':>8} {'frames/s':>9} {'bytes':>8}")
    for name, values in times.items():
        rate = throughput[name] if throughput else 1 / statistics.mean(values)
        print(
            f"{name:<8} {percentile(values, 50) * 1e3:>8.2f} {percentile(values, 95) * 1e3:>8.2f} "
            f"{statistics.mean(values) * 1e3:>8.2f} {rate:>9.0f} {sizes[name]:>8}"
        )
    p50 = percentile(times["proxy"], 50) / percentile(times["direct"], 50)
    p95 = percentile(times["proxy"], 95) / percentile(times["direct"], 95)
    verdict = "meets" if p95 <= 1.1 else "misses"
    print(f"ratio proxy/direct: p50 {p50:.2f}, p95 {p95:.2f} ({verdict} the goal p95 <= 1.1)")


def wait_for(url: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            requests.get(url, timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout_s} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="fetches of every frame per path")
    parser.add_argument("--slices", type=int, default=64)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument(
        "--concurrency", type=int, default=6, help="requests in flight per path (0: skip)"
    )
    parser.add_argument("--auth", choices=("token", "session"), default="token")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="web server worker processes (4 threads each); production's default is 3",
    )
    parser.add_argument(
        "--server",
        choices=("gunicorn", "granian"),
        default="granian",
        help="WSGI server of the app: granian (the platform's) or gunicorn's gthread worker "
        "(for comparison; pip install gunicorn)",
    )
    parser.add_argument(
        "--learn-transfer-syntax",
        action="store_true",
        help="leave Instance.transfer_syntax_uid blank (the proxy asks Orthanc once each)",
    )
    args = parser.parse_args()
    if args.rounds < 1 or args.slices < 1 or args.size < 8 or args.concurrency < 0:
        parser.error("--rounds and --slices must be >= 1, --size >= 8, --concurrency >= 0")
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    if importlib.util.find_spec(args.server) is None:
        parser.error(f"{args.server} is not installed in this environment")

    from tests.support.orthanc import free_port, make_orthanc

    work = Path(tempfile.mkdtemp(prefix="bench-proxy-"))
    orthanc = make_orthanc(work / "orthanc")
    orthanc.start()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DATABASE_URL": f"sqlite:///{work / 'db.sqlite3'}",
        "PLATFORM_VAR_DIR": str(work / "var"),
        "DJANGO_DEBUG": "false",
        "DJANGO_SECRET_KEY": "bench-only-secret-key-0123456789abcdefghijklmnopqrstuvwxyz",
        "DJANGO_SECURE_SSL_REDIRECT": "false",
        "ORTHANC_URL": orthanc.url,
        "ORTHANC_USERNAME": orthanc.username,
        "ORTHANC_PASSWORD": orthanc.password,
        "LOG_LEVEL": "WARNING",
    }
    os.environ.update(env)
    server = None
    try:
        import django

        django.setup()
        from django.core.management import call_command
        from rest_framework.authtoken.models import Token

        from projects.models import Membership, Project, Role
        from tests.dicomweb.dicom_factory import index_series, make_ct_series, store_series
        from tests.factories import UserFactory

        call_command("migrate", verbosity=0)
        project = Project.objects.create(slug="bench", name="Bench")
        user = UserFactory(username="bench-reader")
        Membership.objects.create(project=project, user=user, role=Role.RADIOLOGIST)
        token = Token.objects.create(user=user).key

        series = make_ct_series(slices=args.slices, rows=args.size, columns=args.size)
        started = time.perf_counter()
        store_series(series, url=orthanc.url, auth=(orthanc.username, orthanc.password))
        stored_s = time.perf_counter() - started
        index_series(project, series)
        if not args.learn_transfer_syntax:
            from imaging.models import Instance

            Instance.objects.filter(series__series_instance_uid=series.series_instance_uid).update(
                transfer_syntax_uid=str(series.datasets[0].file_meta.TransferSyntaxUID)
            )
        if args.auth == "session":
            from django.conf import settings
            from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
            from django.contrib.sessions.backends.db import SessionStore

            session = SessionStore()
            session[SESSION_KEY] = str(user.pk)
            session[BACKEND_SESSION_KEY] = settings.AUTHENTICATION_BACKENDS[0]
            session[HASH_SESSION_KEY] = user.get_session_auth_hash()
            session.create()
            credentials = {"Cookie": f"{settings.SESSION_COOKIE_NAME}={session.session_key}"}
        else:
            credentials = {"Authorization": f"Token {token}"}

        port = free_port()
        if args.server == "granian":
            command = [
                sys.executable,
                "-m",
                "granian",
                "--interface",
                "wsgi",
                "config.wsgi:application",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                str(args.workers),
                "--blocking-threads",
                "4",
                "--log-level",
                "warning",
                "--no-access-log",
            ]
        else:
            command = [
                sys.executable,
                "-m",
                "gunicorn",
                "config.wsgi",
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                str(args.workers),
                "--threads",
                "4",
                "--worker-class",
                "gthread",
                "--log-level",
                "warning",
            ]
        server = subprocess.Popen(command, cwd=REPO, env=env)
        app = f"http://127.0.0.1:{port}"
        wait_for(f"{app}/api/health")

        paths = [
            f"/studies/{series.study_instance_uid}/series/{series.series_instance_uid}"
            f"/instances/{uid}/frames/1"
            for uid in series.sop_instance_uids
        ]
        roots = {
            "proxy": f"{app}/dicom-web/projects/{project.slug}",
            "direct": f"{orthanc.url}/dicom-web",
        }
        local = threading.local()

        def session_for(name: str) -> requests.Session:
            """One keep-alive session per path and thread (a browser's connections)."""
            sessions = getattr(local, "sessions", None)
            if sessions is None:
                sessions = local.sessions = {}
            if name not in sessions:
                session = requests.Session()
                session.trust_env = False
                session.headers["Accept"] = ACCEPT
                if name == "proxy":
                    session.headers.update(credentials)
                else:
                    session.auth = (orthanc.username, orthanc.password)
                sessions[name] = session
            return sessions[name]

        def fetch(name: str, path: str) -> tuple[float, int]:
            session, root = session_for(name), roots[name]
            t0 = time.perf_counter()
            response = session.get(root + path, timeout=30)
            size = len(response.content)
            elapsed = time.perf_counter() - t0
            if response.status_code != 200:
                raise RuntimeError(
                    f"{name} {path}: HTTP {response.status_code} {response.text[:200]}"
                )
            return elapsed, size

        for path in paths[:4]:  # warm up both paths (connections, imports, caches)
            fetch("proxy", path)
            fetch("direct", path)

        times: dict[str, list[float]] = {"proxy": [], "direct": []}
        sizes: dict[str, int] = {}
        for round_ in range(args.rounds):
            for index, path in enumerate(paths):
                order = ("proxy", "direct") if (round_ + index) % 2 == 0 else ("direct", "proxy")
                for name in order:
                    elapsed, size = fetch(name, path)
                    times[name].append(elapsed)
                    sizes[name] = size

        frame_kib = args.size * args.size * 2 / 1024
        print(
            f"\nWADO-RS frames, {args.slices} CT slices of {args.size}x{args.size} "
            f"({frame_kib:.0f} KiB each, stored in {stored_s:.2f} s), {args.rounds} rounds, "
            f"{len(times['proxy'])} fetches per path, proxy auth: {args.auth}, transfer "
            f"syntax {'learned from Orthanc' if args.learn_transfer_syntax else 'indexed'}"
        )
        report("sequential, interleaved", times, sizes)

        if args.concurrency:
            concurrent: dict[str, list[float]] = {"proxy": [], "direct": []}
            walls: dict[str, float] = {"proxy": 0.0, "direct": 0.0}
            with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
                for round_ in range(args.rounds):
                    order = ("proxy", "direct") if round_ % 2 == 0 else ("direct", "proxy")
                    for name in order:
                        t0 = time.perf_counter()
                        results = list(pool.map(lambda p, n=name: fetch(n, p), paths))
                        walls[name] += time.perf_counter() - t0
                        concurrent[name].extend(elapsed for elapsed, _ in results)
            report(
                f"{args.concurrency} in flight per path, paths taking turns",
                concurrent,
                sizes,
                {name: len(concurrent[name]) / wall for name, wall in walls.items()},
            )
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
        orthanc.kill()


if __name__ == "__main__":
    main()
