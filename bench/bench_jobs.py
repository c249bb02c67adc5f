"""Job overhead: inference through the worker (queue -> start -> finish) vs the same call in-process.

    .venv/bin/python bench/bench_jobs.py [--jobs 8] [--redis-db 12] [--model DIR]

Self-contained: starts its own Orthanc (tests.support.orthanc), uses a temporary SQLite
database and its own Redis database (`--redis-db`, emptied first: never the app's), trains
a tiny grading model through the ai_engine CLI (two steps on phantoms; `--model` reuses a
folder), ingests `--jobs` phantom MR studies and starts a real worker
(`celery -A worker worker`, prefork, concurrency 1). After one warm-up job it measures:

  baseline:    `ai_engine.registry.inference.run_inference` called in this process on the
               same studies (the model's work: series from Orthanc, grading, Grad-CAM);
  one at a time: a job queued, waited for, the next queued;
  batch:       all jobs queued at once.

For each job: queue-to-start (job created -> RUNNING, from the job row's timestamps),
start-to-finish (RUNNING -> SUCCEEDED) and, in the batch, the worker's gap between jobs
(previous job finished -> next started). Prints p50/p95 and the overhead share
(1 - baseline / end-to-end). Defaults take about 2-3 minutes on 2 busy CPU cores.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MR_SHAPE = (32, 32, 16)
TINY_TRAIN_ARGS = [
    *("--spatial-size", "16,16,16", "--epochs", "1", "--max-steps", "2"),
    *("--batch-size", "3", "--quiet"),
]


def _env(workdir: Path, broker: str) -> dict[str, str]:
    return {
        "PLATFORM_VAR_DIR": str(workdir / "var"),
        "DATABASE_URL": f"sqlite:///{workdir / 'bench.sqlite3'}",
        "DATABASE_CONN_MAX_AGE": "0",
        "PLATFORM_MEDIA_ROOT": str(workdir / "media"),
        "PLATFORM_MODEL_STORE": str(workdir / "models"),
        "CELERY_BROKER_URL": broker,
        "CELERY_RESULT_BACKEND": broker,
        "LOG_LEVEL": "WARNING",
        "OMP_NUM_THREADS": "1",
        "DJANGO_SETTINGS_MODULE": "config.settings",
    }


def _train_model(folder: Path) -> Path:
    from ai_engine.data.phantoms import write_brain_mri

    items = []
    for seed, grade in zip(range(4), (1, 2, 3, 2), strict=True):
        write_brain_mri(folder / f"case{seed}", 1000 + seed, grade=grade, shape=MR_SHAPE)
        items.append(
            {"images": {n: f"case{seed}/{n}" for n in ("T1", "T1c", "T2", "FLAIR")}, "grade": grade}
        )
    (folder / "datalist.json").write_text(
        json.dumps({"training": items[:3], "validation": items[3:]})
    )
    model = folder / "model"
    subprocess.run(
        [
            *(sys.executable, "-m", "ai_engine", "grading", "train"),
            *("--datalist", str(folder / "datalist.json"), "--out", str(model)),
            *TINY_TRAIN_ARGS,
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=True,
        timeout=600,
    )
    return model


class Worker:
    def __init__(self, env: dict[str, str], log: Path):
        self.log = log
        handle = open(log, "ab")  # noqa: SIM115 - lives with the process
        self.process = subprocess.Popen(
            [
                *(sys.executable, "-m", "celery", "-A", "worker", "worker", "-Q", "gpu,cpu"),
                *("--pool=prefork", "--concurrency=1", "--loglevel=INFO", "--without-gossip"),
                *("--without-mingle", "--without-heartbeat", "-n", f"bench-{os.getpid()}@%h"),
            ],
            cwd=REPO,
            env={**os.environ, **env, "PYTHONPATH": str(REPO)},
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while b" ready." not in log.read_bytes():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                sys.exit(f"worker did not start:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _row(name: str, values: list[float]) -> str:
    p50, p95 = statistics.median(values), _percentile(values, 0.95)
    return f"  {name:28s} p50 {p50 * 1000:8.1f} ms   p95 {p95 * 1000:8.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=8, help="jobs per mode (and studies)")
    parser.add_argument("--redis-db", type=int, default=12, help="Redis db used (emptied)")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379", help="Redis server")
    parser.add_argument("--model", type=Path, help="an existing grading model folder")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    if args.jobs < 2:
        parser.error("--jobs must be at least 2")
    if not 0 <= args.redis_db <= 15:
        parser.error("--redis-db must be 0-15")

    workdir = Path(tempfile.mkdtemp(prefix="bench-jobs-"))
    broker = f"{args.redis.rstrip('/')}/{args.redis_db}"
    env = _env(workdir, broker)
    os.environ.update(env)

    import redis

    try:
        redis.Redis.from_url(broker).flushdb()
    except redis.ConnectionError as exc:
        sys.exit(f"Redis not reachable at {broker}: {exc}")

    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)

    from django.conf import settings

    from ai_engine.data.phantoms import write_brain_mri
    from ai_engine.registry import services
    from ai_engine.registry.inference import run_inference
    from ai_engine.registry.models import Job, ProjectAISettings
    from imaging.models import Study, UploadBatch
    from imaging.services import ingest_sources
    from imaging.validation import UploadSource
    from projects.models import Project
    from tests.support.orthanc import make_orthanc

    started = time.perf_counter()
    model_dir = args.model or _train_model(workdir / "train")
    print(f"model: {model_dir} ({time.perf_counter() - started:.0f} s)", flush=True)

    orthanc = make_orthanc(workdir / "orthanc")
    orthanc.start()
    worker = None
    try:
        settings.ORTHANC_URL = orthanc.url
        settings.ORTHANC_USERNAME = orthanc.username
        settings.ORTHANC_PASSWORD = orthanc.password
        env.update(
            ORTHANC_URL=orthanc.url,
            ORTHANC_USERNAME=orthanc.username,
            ORTHANC_PASSWORD=orthanc.password,
        )
        project = Project.objects.create(slug="bench", name="Bench", deidentify=False)
        ProjectAISettings.objects.create(project=project, auto_inference=False)
        for seed in range(args.jobs):
            folder = workdir / "studies" / f"s{seed}"
            write_brain_mri(folder, 50 + seed, grade=1 + seed % 3, shape=MR_SHAPE)
            files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix != ".gz")
            summary = ingest_sources(
                project=project,
                sources=[UploadSource.from_path(p) for p in files],
                source=UploadBatch.Source.CLI,
            )
            assert summary.accepted == len(files) and not summary.rejected, summary.rejected
        studies = list(Study.objects.filter(project=project).order_by("pk"))
        version = services.model_version_register(
            project=project,
            task="tumor_grading",
            source_dir=model_dir,
            provenance="trained",
            validation_metric_name="macro_f1",
            validation_metric=0.0,
        )
        print(f"{len(studies)} studies of 4 MR series {MR_SHAPE} in Orthanc", flush=True)

        # Baseline: the model's work in this process (after one warm-up call).
        out = workdir / "media" / "baseline"
        run_inference(version, studies[0], out_dir=out)
        baseline = []
        for study in studies:
            t0 = time.perf_counter()
            findings = run_inference(version, study, out_dir=out)
            baseline.append(time.perf_counter() - t0)
            assert len(findings) == 1
        shutil.rmtree(out)

        worker = Worker(env, workdir / "worker.log")

        def finished(job_ids: list[int], timeout_s: float = 300) -> list[Job]:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                jobs = list(Job.objects.filter(pk__in=job_ids).order_by("started_at", "pk"))
                if all(job.is_terminal for job in jobs):
                    bad = [(j.pk, j.status, j.error) for j in jobs if j.status != "succeeded"]
                    if bad:
                        sys.exit(f"jobs did not succeed: {bad}")
                    return jobs
                time.sleep(0.02)
            sys.exit(f"jobs not finished in {timeout_s} s:\n{worker.log.read_text()[-3000:]}")

        def queue(study) -> int:
            job, created = services.inference_job_create(study=study, model_version=version)
            assert created
            return job.pk

        finished([queue(studies[0])])  # warm-up: the pool process imports torch, loads code

        sequential = [finished([queue(study)])[0] for study in studies]
        batch = finished([queue(study) for study in studies])
    finally:
        if worker is not None:
            worker.stop()
        orthanc.stop()

    def to_start(job):
        return (job.started_at - job.created_at).total_seconds()

    def to_finish(job):
        return (job.finished_at - job.started_at).total_seconds()

    def total(job):
        return (job.finished_at - job.created_at).total_seconds()

    base = statistics.median(baseline)
    print(f"\n{args.jobs} jobs per mode, tumor_grading on {MR_SHAPE} phantoms, broker {broker}")
    print("baseline (run_inference in-process)")
    print(_row("model work", baseline))
    print("one job at a time")
    seq_total = [total(j) for j in sequential]
    print(_row("queue -> start", [to_start(j) for j in sequential]))
    print(_row("start -> finish", [to_finish(j) for j in sequential]))
    print(_row("end to end", seq_total))
    share = 1 - base / statistics.median(seq_total)
    print(
        f"  end to end / baseline: {statistics.median(seq_total) / base:.2f}x;"
        f" overhead share {share:.0%} (p50 {(statistics.median(seq_total) - base) * 1000:.0f} ms"
        " per job)"
    )
    print(f"batch of {len(batch)} queued at once")
    gaps = [(b.started_at - a.finished_at).total_seconds() for a, b in itertools.pairwise(batch)]
    print(_row("queue -> start (incl. wait)", [to_start(j) for j in batch]))
    print(_row("start -> finish", [to_finish(j) for j in batch]))
    print(_row("gap between jobs", gaps))
    makespan = (batch[-1].finished_at - min(j.created_at for j in batch)).total_seconds()
    print(
        f"  makespan {makespan:.2f} s = {makespan / len(batch) * 1000:.0f} ms per job vs baseline"
        f" {base * 1000:.0f} ms: {makespan / len(batch) / base:.2f}x;"
        f" overhead share {1 - base * len(batch) / makespan:.0%}"
    )
    if args.keep:
        print(f"work folder kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
