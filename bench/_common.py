"""What the benchmark scripts share: the repository root, the commit a run measured, the
environment of a library's worker subprocess and the run of one worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def log(msg: str) -> None:
    """Progress, on stderr (stdout carries the tables)."""
    print(msg, file=sys.stderr, flush=True)


def git_commit() -> str:
    """HEAD's short hash, marked when tracked files have uncommitted changes; "unknown" outside git.
    NYBBLE_BENCH_COMMIT overrides it (a copy of the tree whose .git is not its own)."""
    if os.environ.get("NYBBLE_BENCH_COMMIT"):
        return os.environ["NYBBLE_BENCH_COMMIT"]
    try:
        sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"], check=True,
                             capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               check=True, capture_output=True, text=True).stdout.strip()
        return sha + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def lib_env(lib: str, reference_dir: Path) -> dict:
    """The environment of a worker: the reference (bitsandbytes 0.50.2, from NYBBLE_REFERENCE_DIR or
    reference_dir) or nybble's drop-in importable as ``bitsandbytes``; torch's worker gets neither."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if lib == "reference":
        env["PYTHONPATH"] = os.environ.get("NYBBLE_REFERENCE_DIR", str(reference_dir))
        env.pop("BNB_CUDA_VERSION", None)  # the reference picks its library from torch's CUDA version
    elif lib == "nybble":
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "python"), str(ROOT / "python" / "compat")])
    env.setdefault("PYTHONWARNINGS", "ignore")
    return env


def run_worker(script: str, lib: str, cfg: dict, env: dict) -> dict:
    """Runs ``script --worker lib --config cfg --result FILE`` and returns the JSON it wrote, or a
    result saying the worker failed."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(script).resolve()), "--worker", lib, "--config", json.dumps(cfg),
               "--result", str(out)]
        log(f"+ {lib}: PYTHONPATH={env.get('PYTHONPATH', '')}")
        proc = subprocess.run(cmd, env=env, cwd=ROOT)
        if proc.returncode != 0 or not out.exists():
            return {"info": {"lib": lib, "failed": f"worker exited with {proc.returncode}"}, "rows": {}}
        return json.loads(out.read_text())


def add_worker_arguments(ap, libs) -> None:
    """The options run_worker passes to a script's worker subprocess."""
    ap.add_argument("--worker", choices=libs, help="(internal) run one library's measurements")
    ap.add_argument("--config", help="(internal) the run's configuration, JSON")
    ap.add_argument("--result", type=Path, help="(internal) where the worker writes its JSON")


def serve_worker(args, worker) -> bool:
    """In a worker subprocess (--worker given): writes worker(lib, config)'s result and returns True."""
    if not args.worker:
        return False
    args.result.write_text(json.dumps(worker(args.worker, json.loads(args.config))))
    return True
