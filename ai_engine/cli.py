"""`python -m ai_engine GROUP ...`: one entry point, one module per command group.

Each group's module exposes `build_parser(prog: str) -> argparse.ArgumentParser` and
`run(args: argparse.Namespace) -> int`. Modules are imported only when their group is
used, so `--help` stays fast and groups do not depend on each other.
"""

from __future__ import annotations

import importlib
import sys

from ai_engine.errors import AIEngineError

GROUPS: dict[str, tuple[str, str]] = {
    "phantoms": ("ai_engine.data.phantoms_cli", "write phantom CT / MRI studies with ground truth"),
    "detection": ("ai_engine.detection.cli", "lung-nodule detection: train, evaluate, predict"),
    "grading": ("ai_engine.grading.cli", "tumor grading: train, evaluate, predict, explain"),
    "export": ("ai_engine.deploy.cli_export", "export a model folder to TorchScript and ONNX"),
    "quantize": ("ai_engine.deploy.cli_quantize", "INT8 quantization for CPU inference"),
    "distill": ("ai_engine.deploy.cli_distill", "distil a teacher model into a smaller student"),
    "active-learning": (
        "ai_engine.active_learning.cli",
        "rank unlabeled studies for labelling (uncertainty, random)",
    ),
}


def _usage() -> str:
    lines = ["usage: python -m ai_engine GROUP [options]", "", "groups:"]
    lines += [f"  {name:<16} {help_}" for name, (_, help_) in GROUPS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print(_usage())
        return 0 if argv else 2
    group, rest = argv[0], argv[1:]
    if group not in GROUPS:
        print(f"error: unknown group {group!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(GROUPS[group][0])
    parser = module.build_parser(f"python -m ai_engine {group}")
    args = parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except AIEngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"error: file not found: {exc.filename or exc}", file=sys.stderr)
        return 2
