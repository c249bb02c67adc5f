"""The viewer's TypeScript unit tests (frontend/test/, Vitest), run as part of `make test`.

They cover what the browser tests reach only through pixels: the NIfTI reader against files
`ai_engine.io.save_nifti` wrote (heat maps and masks), slice ordering from WADO-RS metadata,
plane geometry, and how findings and refusals read. Vitest's JSON report is checked so that
a skipped or missing test file is a failure here, not a quiet pass.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

FRONTEND = Path(__file__).resolve().parents[2] / "frontend"


def test_viewer_unit_tests_pass(tmp_path):
    report = tmp_path / "vitest.json"
    env = {**os.environ, "PLATFORM_PYTHON": sys.executable, "CI": "true"}
    done = subprocess.run(
        ["npx", "--no-install", "vitest", "run", "--reporter=json", f"--outputFile={report}"],
        cwd=FRONTEND,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert report.is_file(), done.stdout[-4000:] + done.stderr[-4000:]
    results = json.loads(report.read_text())
    failed = [
        f"{Path(file['name']).name} > {case['fullName']}: {' '.join(case['failureMessages'])[:500]}"
        for file in results["testResults"]
        for case in file["assertionResults"]
        if case["status"] != "passed"
    ]
    assert not failed, "\n".join(failed)
    ran = {Path(file["name"]).name for file in results["testResults"]}
    assert ran == {p.name for p in (FRONTEND / "test").glob("*.test.ts")}
    assert results["numPassedTests"] == results["numTotalTests"] > 0
    assert done.returncode == 0, done.stderr[-4000:]
