#!/usr/bin/env python3
"""`daemon start` until it answers, and `token list` through the daemon, on a vault of N
tokens, as ratios to `token list` run directly (the CLI opening the same vault once) in the
same run, and how long filling the vault took; with a second binary (say, a release build of
an earlier commit), the same rows for it on the same home. Run it at 100 and 5,000 tokens to
see how the costs grow with the vault.

Usage: cargo build --release && python3 benches/daemon_start.py [tokens] [runs] [other-handoff]
Bounded: `tokens` (default 1000) adds to fill the vault, `runs` (default 7) starts, every
command under a 120 s timeout.
"""
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

TOKENS = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
RUNS = int(sys.argv[2]) if len(sys.argv) > 2 else 7
BIN = pathlib.Path(__file__).resolve().parent.parent / "target" / "release" / "handoff"
OTHER = pathlib.Path(sys.argv[3]).resolve() if len(sys.argv) > 3 else None
if not BIN.is_file():
    sys.exit(f"{BIN} not found: run `cargo build --release` first")


def timed(argv, stdin=None):
    start = time.perf_counter()
    subprocess.run(argv, input=stdin, capture_output=True, check=True, timeout=120)
    return (time.perf_counter() - start) * 1000


with tempfile.TemporaryDirectory() as tmp:
    passphrase = pathlib.Path(tmp, "passphrase")
    passphrase.write_text("benchmark passphrase\n")
    os.chmod(passphrase, 0o600)
    home = ["--home", str(pathlib.Path(tmp, "home")), "--passphrase-file", str(passphrase)]
    subprocess.run([str(BIN)] + home + ["init", "--name", "bench"], capture_output=True, check=True)
    pathlib.Path(tmp, "home", "config.toml").write_text(
        '[net]\nlisten = ["/ip4/127.0.0.1/tcp/0"]\nmdns = false\n'
    )
    # Filled through a daemon (one unlock), then stopped.
    subprocess.run([str(BIN)] + home + ["daemon", "start"], capture_output=True, check=True)
    subprocess.run([str(BIN)] + home + ["unlock"], capture_output=True, check=True)
    filling = time.perf_counter()
    for i in range(TOKENS):
        subprocess.run(
            [str(BIN)] + home + ["token", "add", "openai", "--label", f"t{i}"],
            input=f"sk-proj-bench-{i:06}".encode(), capture_output=True, check=True, timeout=120,
        )
    filled = time.perf_counter() - filling
    through_daemon = statistics.median(
        timed([str(BIN)] + home + ["token", "list"]) for _ in range(RUNS)
    )
    subprocess.run([str(BIN)] + home + ["daemon", "stop"], capture_output=True, check=True)

    def rows(binary):
        starts = []
        for _ in range(RUNS):
            starts.append(timed([str(binary)] + home + ["daemon", "start"]))
            subprocess.run([str(binary)] + home + ["daemon", "stop"], capture_output=True, check=True)
        lists = [timed([str(binary)] + home + ["token", "list"]) for _ in range(RUNS)]
        return statistics.median(lists), statistics.median(starts)

    base, start = rows(BIN)
    print(f"vault of {TOKENS} tokens, medians of {RUNS}")
    print(f"{'token list, direct (baseline)':<40} {base:8.1f} ms  x1.00")
    print(f"{'daemon start, until it answers':<40} {start:8.1f} ms  x{start / base:.2f}")
    print(f"{'token list, through the daemon':<40} {through_daemon:8.1f} ms  x{through_daemon / base:.2f}")
    print(f"filling {TOKENS} tokens through the daemon, one `token add` each: {filled:.1f} s")
    if OTHER is not None:
        other_base, other_start = rows(OTHER)
        print(f"{'other: token list, direct':<40} {other_base:8.1f} ms  x{other_base / base:.2f}")
        print(
            f"{'other: daemon start':<40} {other_start:8.1f} ms  x{other_start / base:.2f}"
            f"  (this build x{start / other_start:.2f} of it)"
        )
