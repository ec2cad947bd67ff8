"""Runs the whole benchmark suite in one call and writes ``<out_dir>/<date>_<gpu>.json`` and ``.md``.

Every measurement runs in a child process (one per section and config): device memory peaks are then per
process, a crash or an OOM costs one job, and this parent never touches the GPU. Jobs run in priority
order under one time budget (``--budget_s``, default 480 s); each gets at most its cap and what is left
(with ``--only``: what is left, shared in proportion to the caps), passes that on as its own soft budget,
and is killed a little after it. The JSON and the markdown are rewritten after every job, so a run cut
short keeps everything measured so far. If the environment has
OUT (the device machine's output folder) and ``--out_dir`` is elsewhere, both files are copied there too.

    python3 benchmarks/run_all.py --out_dir benchmarks/results              # GPU, ~8 minutes
    python3 benchmarks/run_all.py --smoke --out_dir /tmp/bench_smoke        # CPU check, tiny configs
    python3 benchmarks/run_all.py --only prefill --configs 8b --lengths 32K,128K,1M --budget_s 540
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import report

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SECTIONS = ("matmul", "prefill", "eval", "peers", "decode")


@dataclasses.dataclass
class Job:
    name: str
    section: str  # one of SECTIONS (what --only selects)
    argv: list[str]
    cap_s: float  # most seconds this job may take in the full run
    configs: tuple[str, ...] = ()  # model configs it covers (what --configs selects)


def plan(args) -> list[Job]:
    smoke = ["--smoke"] if args.smoke else []
    lengths = ["--lengths", args.lengths] if args.lengths else []
    jobs = [
        Job("hardware", "matmul", ["hardware.py"], 45),
        Job("prefill_300m", "prefill", ["prefill.py", "--configs", "300m", *lengths], 95, ("300m",)),
        Job("prefill_1b", "prefill", ["prefill.py", "--configs", "1b", *lengths], 110, ("1b",)),
        Job("eval", "eval", ["eval_throughput.py"], 75, ("300m",)),
        Job("recompute", "peers", ["peers.py", "recompute"], 45, ("300m",)),
        Job("lucidrains", "peers", ["peers.py", "lucidrains"], 50, ("300m",)),
        Job("decode", "decode", ["decode.py", "--configs", "300m,1b"], 70, ("300m", "1b")),
        Job("hf_llama", "peers", ["peers.py", "hf"], 45, ("300m",)),
        Job("prefill_8b", "prefill", ["prefill.py", "--configs", "8b", *lengths], 120, ("8b",)),
        Job("decode_8b", "decode", ["decode.py", "--configs", "8b"], 60, ("8b",)),
    ]
    if args.smoke:  # code paths only: fewer sizes, so the whole check takes about a minute on two CPU cores
        extra = {"prefill_300m": ["--lengths", args.lengths or "512,2048", "--sweep_chunks", "128"],
                 "prefill_1b": ["--lengths", args.lengths or "512,2048", "--sweep_chunks", "128"],
                 "prefill_8b": ["--lengths", args.lengths or "512", "--sweep_chunks", "none"],
                 "eval": ["--prompt_lengths", "400", "--batches", "1,2", "--reps", "2"],
                 "recompute": ["--prompt_lengths", "400", "--new_tokens", "6"],
                 "lucidrains": ["--prompt_lengths", "400", "--prefill_lengths", "512"],
                 "decode": ["--batches", "1,4", "--reps", "2"],
                 "decode_8b": ["--batches", "1", "--reps", "2"]}
        for job in jobs:
            job.argv = [a for a in job.argv if a not in ("--lengths", args.lengths)] + extra.get(job.name, [])
            job.cap_s = 60
            if job.name == "decode":
                job.configs = ("300m",)
                job.argv[job.argv.index("--configs") + 1] = "300m"
    only = set(report_list(args.only)) if args.only else set(SECTIONS)
    unknown = only - set(SECTIONS)
    if unknown:
        raise SystemExit(f"--only: unknown sections {sorted(unknown)}; use {','.join(SECTIONS)}")
    configs = set(report_list(args.configs)) if args.configs else None
    out = []
    for job in jobs:
        if job.section not in only:
            continue
        if configs is not None and job.configs and not (set(job.configs) & configs):
            continue
        if configs is not None and job.section in ("prefill", "decode"):
            picked = [c for c in job.configs if c in configs]
            i = job.argv.index("--configs")
            job.argv[i + 1] = ",".join(picked)
        job.argv = job.argv + smoke
        out.append(job)
    return out


def report_list(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def gpu_name() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20)
        names = [n.strip() for n in out.stdout.splitlines() if n.strip()]
        if out.returncode == 0 and names:
            return names[0] + (f" x{len(names)}" if len(names) > 1 else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "cpu"


def versions() -> dict:
    out = {"python": sys.version.split()[0]}
    for dist in ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda12-plugin", "flax", "torch", "transformers",
                 "infini-transformer-pytorch", "rotary-embedding-torch", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


class Running:
    """A job's child process, started in its own process group so that it can be killed whole."""

    def __init__(self, job: Job, jsonl: Path, budget_s: float, env: dict):
        self.job, self.budget_s = job, budget_s
        cmd = [sys.executable, str(HERE / job.argv[0]), *job.argv[1:], "--jsonl", str(jsonl),
               "--budget_s", f"{budget_s - min(15.0, 0.2 * budget_s):.0f}"]
        print(f"\n=== {job.name}: {' '.join(cmd[1:])} (budget {budget_s:.0f} s)", flush=True)
        self.t0 = time.perf_counter()
        # Its own process group (so that it can be killed whole) but this session: whatever ends this run's
        # session also ends the jobs, and no orphan keeps holding the GPU.
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, process_group=0)

    def kill(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the group of the child started above, nothing else
            self.proc.wait()

    def poll(self) -> str | None:
        """None while running; else its status (killing it first once past its budget + 20 s)."""
        rc = self.proc.poll()
        if rc is not None:
            return "ok" if rc == 0 else f"exit {rc}"
        if time.perf_counter() - self.t0 > self.budget_s + 20:
            self.kill()
            return "killed (over budget)"
        return None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out_dir", default="benchmarks/results")
    p.add_argument("--smoke", action="store_true", help="tiny configs (CPU check)")
    p.add_argument("--only", default=None, help=f"comma list of {','.join(SECTIONS)}")
    p.add_argument("--configs", default=None, help="restrict prefill/decode to these of 300m,1b,8b")
    p.add_argument("--lengths", default=None, help="prefill lengths, e.g. 32K,128K,1M")
    p.add_argument("--budget_s", type=float, default=None, help="whole-run budget (default 480; smoke 100)")
    p.add_argument("--parallel", type=int, default=None, help="jobs at a time (default 1; smoke 2: CPU only)")
    p.add_argument("--no_compile_cache", action="store_true",
                   help="no JAX persistent compilation cache shared by the children (default: one, per run)")
    p.add_argument("--dry_run", action="store_true", help="print the jobs and exit")
    args = p.parse_args(argv)
    if args.dry_run:
        for job in plan(args):
            print(f"{job.name:14s} cap {job.cap_s:4.0f} s: {' '.join(job.argv)}")
        return
    budget = args.budget_s or (100.0 if args.smoke else 480.0)
    start = time.perf_counter()
    deadline = start + budget
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    gpu = gpu_name()
    date = datetime.date.today().isoformat()
    stem = f"{date}_{re.sub(r'[^A-Za-z0-9._-]+', '-', gpu).strip('-')}{'_smoke' if args.smoke else ''}"
    work = Path(tempfile.mkdtemp(prefix="infini_bench_"))
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(HERE)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("TQDM_DISABLE", "1")
    if not args.no_compile_cache:
        env["INFINI_BENCH_COMPILE_CACHE"] = str(work / "jax_cache")
    meta = dict(gpu=gpu, date=date, smoke=args.smoke, command=" ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
                versions=versions(), budget_s=budget, jobs=[], complete=False,
                compile_cache="per-run persistent cache" if not args.no_compile_cache else "off")
    copies = []
    out_env = os.environ.get("OUT")
    if out_env and Path(out_env).resolve() != out_dir.resolve():
        copies.append(Path(out_env))
    jobs = plan(args)
    print(f"infini-jax benchmarks on {gpu}: {len(jobs)} jobs, budget {budget:.0f} s, results {out_dir}/{stem}.*",
          flush=True)

    last_write = [0.0]

    def write():
        last_write[0] = time.perf_counter()
        records = report.load_records(sorted(work.glob("*.jsonl")))
        backend = next((r.get("backend") for r in records if r.get("kind") == "device"), None)
        meta.update(elapsed_s=time.perf_counter() - start, backend=backend)
        try:
            derived = report.derive(records, smoke=args.smoke)
            markdown = report.render(meta, records, derived)
        except Exception as e:  # noqa: BLE001 - a report bug must not lose the measurements
            derived = dict(targets=[], error=f"{type(e).__name__}: {e}")
            markdown = f"# report failed: {derived['error']}\n\nSee the JSON file for the records.\n"
            print(f"report failed: {derived['error']}", flush=True)
        doc = dict(meta=meta, derived=derived, records=records)
        for folder in [out_dir, *copies]:
            try:
                folder.mkdir(parents=True, exist_ok=True)
                (folder / f"{stem}.json").write_text(json.dumps(doc, indent=1, default=str) + "\n", encoding="utf-8")
                (folder / f"{stem}.md").write_text(markdown, encoding="utf-8")
            except OSError as e:
                print(f"could not write results to {folder}: {e}", flush=True)
        return derived

    write()
    queue, running = list(jobs), []

    def stop(signum, _frame):  # SIGTERM / SIGINT: end the running jobs, write what they measured
        for r in running:
            r.kill()
        write()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    parallel = args.parallel or (2 if args.smoke else 1)
    while queue or running:
        while queue and len(running) < parallel:
            job = queue.pop(0)
            left = deadline - time.perf_counter()
            if left < 25:
                meta["jobs"].append(dict(name=job.name, status="skipped (run budget spent)", budget_s=0))
                print(f"=== {job.name}: skipped, {left:.0f} s left", flush=True)
                write()
                continue
            # Full run: priority order, a job gets its cap and never more than is left. With --only: what is
            # left, shared in proportion to the caps of the jobs still to run. Either way time a quick job
            # leaves unused flows to the later ones.
            if args.only and not args.smoke:
                budget_s = left * job.cap_s / (job.cap_s + sum(j.cap_s for j in queue))
            else:
                budget_s = min(job.cap_s, left)
            running.append(Running(job, work / f"{job.name}.jsonl", budget_s, env))
        time.sleep(0.2)
        if time.perf_counter() - last_write[0] > 10:  # a run killed from outside keeps the records to date
            write()
        for r in list(running):
            status = r.poll()
            if status is None:
                continue
            running.remove(r)
            wall = time.perf_counter() - r.t0
            print(f"=== {r.job.name}: {status} after {wall:.0f} s", flush=True)
            meta["jobs"].append(dict(name=r.job.name, status=status, wall_s=wall, budget_s=r.budget_s))
            write()
    meta["complete"] = True
    derived = write()
    print(f"\nDone in {time.perf_counter() - start:.0f} s. Results: {out_dir / stem}.json / .md", flush=True)
    for t in derived["targets"]:
        print(f"  [{t['status']:>4}] {t['what']}: {t['measured']} (goal {t['target']})", flush=True)
    shutil.rmtree(work / "jax_cache", ignore_errors=True)


if __name__ == "__main__":
    main()
