"""Ingest throughput: the platform's ingest vs raw STOW-RS, side by side on the same files.

    .venv/bin/python bench/bench_ingest.py [--series 3] [--slices 64] [--size 256] [--repeats 3]
    .venv/bin/python bench/bench_ingest.py --profile   # one platform ingest under cProfile
        (prints the top functions by cumulative and by own time; BENCH_PROFILE_OUT=file
        keeps the stats for pstats)

Self-contained: writes phantom chest CT series (ai_engine.data.phantoms) into a temporary
folder, starts its own Orthanc (tests.support.orthanc.make_orthanc) and uses a temporary
SQLite database. For each repeat it empties Orthanc and times
  raw:      dcmread each file + dicomweb-client `store_instances` in batches (what a plain
            STOW-RS client does), and
  platform: `imaging.services.ingest_sources` (validation, de-identification on, STOW-RS,
            indexing) on the same files,
then prints instances/s of both and the ratio platform/raw (goal >= 0.8), and the load
average, since both paths share the machine's CPUs with whatever else runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _setup_django(workdir: Path) -> None:
    os.environ["PLATFORM_VAR_DIR"] = str(workdir / "var")
    os.environ["DATABASE_URL"] = f"sqlite:///{workdir / 'bench.sqlite3'}"
    os.environ["PLATFORM_MEDIA_ROOT"] = str(workdir / "media")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def _write_phantoms(folder: Path, series: int, slices: int, size: int) -> list[Path]:
    from ai_engine.data.phantoms import write_chest_ct

    for seed in range(series):
        write_chest_ct(folder / f"case{seed}", seed=seed, shape=(size, size, slices))
    return sorted(p for p in folder.rglob("*") if p.is_file())


def main() -> None:
    try:
        _main()
    finally:  # phantoms, Orthanc storage and the database of this run
        for workdir in Path(tempfile.gettempdir()).glob(f"bench-ingest-{os.getpid()}-*"):
            shutil.rmtree(workdir, ignore_errors=True)


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=3)
    parser.add_argument("--slices", type=int, default=64)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--profile", action="store_true", help="run one platform ingest under cProfile instead"
    )
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix=f"bench-ingest-{os.getpid()}-"))
    _setup_django(workdir)

    import pydicom
    from django.conf import settings

    from imaging.models import UploadBatch
    from imaging.orthanc import OrthancClient
    from imaging.services import ingest_sources
    from imaging.validation import UploadSource
    from projects.models import Project
    from tests.support.orthanc import make_orthanc

    files = _write_phantoms(workdir / "dicom", args.series, args.slices, args.size)
    megabytes = sum(p.stat().st_size for p in files) / 1e6
    orthanc = make_orthanc(workdir / "orthanc")
    orthanc.start()
    settings.ORTHANC_URL = orthanc.url
    settings.ORTHANC_USERNAME = orthanc.username
    settings.ORTHANC_PASSWORD = orthanc.password
    project = Project.objects.create(slug="bench", name="Bench", deidentify=True)
    batch = settings.INGEST_STOW_BATCH_INSTANCES

    def raw() -> None:
        dicomweb = OrthancClient().dicomweb()
        for i in range(0, len(files), batch):
            dicomweb.store_instances([pydicom.dcmread(p) for p in files[i : i + batch]])

    def platform() -> None:
        summary = ingest_sources(
            project=project,
            sources=[UploadSource.from_path(p) for p in files],
            source=UploadBatch.Source.CLI,
        )
        assert summary.accepted == len(files) and not summary.rejected, summary.rejected

    def reset() -> None:
        orthanc.clear()
        from imaging.models import Patient, Study

        Study.objects.all().delete()
        Patient.objects.all().delete()

    if args.profile:
        import cProfile
        import pstats

        try:
            reset()
            platform()  # warm up (imports, connections)
            reset()
            profiler = cProfile.Profile()
            profiler.runcall(platform)
            profiler.dump_stats(os.environ.get("BENCH_PROFILE_OUT", str(workdir / "ingest.prof")))
        finally:
            orthanc.stop()
        stats = pstats.Stats(profiler)
        stats.sort_stats("cumulative").print_stats(40)
        stats.sort_stats("tottime").print_stats(30)
        return

    timings: dict[str, list[float]] = {"raw STOW-RS": [], "platform ingest": []}
    try:
        for _ in range(args.repeats):
            for name, run in (("raw STOW-RS", raw), ("platform ingest", platform)):
                reset()
                started = time.perf_counter()
                run()
                timings[name].append(time.perf_counter() - started)
                stats = OrthancClient().statistics()
                assert int(stats["CountInstances"]) == len(files), stats
    finally:
        orthanc.stop()

    n = len(files)
    print(
        f"files: {n} instances ({args.series} series x {args.slices} slices of "
        f"{args.size}x{args.size}, {megabytes:.1f} MB), STOW batch {batch}, "
        f"{args.repeats} repeats, median"
    )
    rates = {}
    for name, seconds in timings.items():
        median = statistics.median(seconds)
        rates[name] = n / median
        runs = ", ".join(f"{s:.2f}" for s in seconds)
        print(f"{name:16s} {median:6.2f} s  {rates[name]:7.1f} inst/s   (runs: {runs} s)")
    ratio = rates["platform ingest"] / rates["raw STOW-RS"]
    print(f"ratio platform/raw: {ratio:.2f} (goal >= 0.80)")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"load average (1, 5, 15 min): {load} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
