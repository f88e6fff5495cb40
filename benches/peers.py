#!/usr/bin/env python3
"""handoff beside Syncthing on the same machine, in the same run, on loopback.

Syncthing (Debian's `syncthing`) is the peer: two instances sharing one folder, with discovery,
relays, NAT and usage reports off. Measured for it:
  - write -> visible: a small file written into A's folder, a REST scan of the folder asked
    for at once (its best case: its default watcher waits ~10 s), until the file is in B's;
  - restart -> connected: B's process started again until its REST API says A is connected.
Measured for handoff:
  - add -> readable: `cargo bench --bench mesh` (a token added on A until B holds it), at the
    vault sizes given;
  - restart -> connected: two daemons of the release binary, paired with a code; B's daemon
    stopped and started again until `peer list` on B shows A online, at each vault size.
Each handoff figure is printed with its ratio to Syncthing's.

Usage: cargo build --release && python3 benches/peers.py [--sizes 100,5000] [--writes 50]
       [--runs 5] [--mesh-sizes 10,5000] [--no-mesh]
Without `syncthing` on PATH it prints one SKIPPED line and exits 0 (install: apt-get install
syncthing). Bounded: every wait has a deadline, every command a timeout. CI does not run it.
"""
import argparse
import json
import os
import pathlib
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
BIN = ROOT / "target" / "release" / "handoff"
WAIT = 60  # seconds, any single wait
PASSPHRASE = "benchmark passphrase\n"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def until(what, check, deadline=WAIT, pause=0.0002):
    """Polls `check` until it returns something true; its value."""
    end = time.perf_counter() + deadline
    while True:
        value = check()
        if value:
            return value
        if time.perf_counter() > end:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(pause)


def percentile(samples, p):
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]


class Syncthing:
    """One Syncthing instance on loopback, its home and folder under `root`."""

    def __init__(self, root, name):
        self.home = root / name
        self.folder = root / f"{name}-folder"
        self.folder.mkdir(parents=True)
        subprocess.run(
            ["syncthing", "generate", f"--home={self.home}", "--no-default-folder"],
            capture_output=True, check=True, timeout=WAIT,
        )
        self.id = subprocess.run(
            ["syncthing", "serve", f"--home={self.home}", "--device-id"],
            capture_output=True, check=True, timeout=WAIT, text=True,
        ).stdout.strip()
        self.gui, self.listen = free_port(), free_port()
        self.key = f"bench-{name}-{os.getpid()}"
        self.process = None

    def configure(self, other):
        devices = "".join(
            f'<device id="{d.id}" name="{d.home.name}" compression="metadata">'
            f"<address>tcp://127.0.0.1:{d.listen}</address></device>"
            for d in (self, other)
        )
        shared = "".join(f'<device id="{d.id}"></device>' for d in (self, other))
        (self.home / "config.xml").write_text(
            f"""<configuration version="36">
  <folder id="bench" label="bench" path="{self.folder}" type="sendreceive"
          rescanIntervalS="3600" fsWatcherEnabled="false">
    {shared}<minDiskFree unit="%">0</minDiskFree>
  </folder>
  {devices}
  <gui enabled="true" tls="false"><address>127.0.0.1:{self.gui}</address>
    <apikey>{self.key}</apikey></gui>
  <options>
    <listenAddress>tcp://127.0.0.1:{self.listen}</listenAddress>
    <globalAnnounceEnabled>false</globalAnnounceEnabled>
    <localAnnounceEnabled>false</localAnnounceEnabled>
    <relaysEnabled>false</relaysEnabled>
    <natEnabled>false</natEnabled>
    <stunKeepaliveStartS>0</stunKeepaliveStartS>
    <urAccepted>-1</urAccepted>
    <autoUpgradeIntervalH>0</autoUpgradeIntervalH>
    <crashReportingEnabled>false</crashReportingEnabled>
    <startBrowser>false</startBrowser>
    <minHomeDiskFree unit="%">0</minHomeDiskFree>
  </options>
</configuration>
"""
        )

    def start(self):
        self.process = subprocess.Popen(
            ["syncthing", "serve", f"--home={self.home}", "--no-browser", "--no-restart",
             "--no-upgrade"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def stop(self):
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=WAIT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=WAIT)
            self.process = None

    def rest(self, path, method="GET"):
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.gui}{path}", method=method,
            headers={"X-API-Key": self.key},
        )
        with urllib.request.urlopen(request, timeout=WAIT) as response:
            body = response.read()
        return json.loads(body) if body else None

    def connected_to(self, other):
        try:
            connections = self.rest("/rest/system/connections")["connections"]
        except (urllib.error.URLError, ConnectionError, OSError, ValueError):
            return False
        return connections.get(other.id, {}).get("connected", False)


def syncthing_figures(writes, runs):
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        a, b = Syncthing(root, "a"), Syncthing(root, "b")
        a.configure(b)
        b.configure(a)
        try:
            a.start()
            b.start()
            until("the two Syncthing instances to connect", lambda: b.connected_to(a), pause=0.05)
            # The folder is idle and in sync once a first file went across.
            (a.folder / "warmup").write_bytes(b"warmup")
            a.rest("/rest/db/scan?folder=bench", "POST")
            until("the first file on B", lambda: (b.folder / "warmup").exists(), pause=0.01)
            time.sleep(0.3)
            latencies = []
            for i in range(writes):
                body = f"sk-ant-api03-bench-{i:06}".encode() * 4
                target = b.folder / f"t{i}"
                started = time.perf_counter()
                (a.folder / f"t{i}").write_bytes(body)
                a.rest("/rest/db/scan?folder=bench", "POST")
                until(f"t{i} on B", lambda: target.exists() and target.stat().st_size == len(body))
                latencies.append((time.perf_counter() - started) * 1000)
                # Its best case: a write that comes sooner after the last pull waits ~250 ms
                # for the next one.
                time.sleep(0.3)
            restarts = []
            for _ in range(runs):
                b.stop()
                started = time.perf_counter()
                b.start()
                until("B to reconnect", lambda: b.connected_to(a), pause=0.002)
                restarts.append((time.perf_counter() - started) * 1000)
        finally:
            a.stop()
            b.stop()
    return latencies, restarts


class Handoff:
    """A home of the release binary on loopback."""

    def __init__(self, root, name, passphrase):
        self.root = root / name
        self.args = ["--home", str(self.root), "--passphrase-file", str(passphrase)]

    def run(self, *args, stdin=None):
        return subprocess.run(
            [str(BIN)] + self.args + list(args), input=stdin, capture_output=True,
            check=True, timeout=120,
        ).stdout

    def loopback_only(self):
        (self.root / "config.toml").write_text(
            '[net]\nlisten = ["/ip4/127.0.0.1/tcp/0"]\nmdns = false\n'
        )

    def online(self, name):
        try:
            peers = json.loads(self.run("--json", "peer", "list"))
        except (subprocess.CalledProcessError, ValueError):
            return False
        return any(p.get("name") == name and p.get("online") for p in peers)

    def token_count(self):
        try:
            return len(json.loads(self.run("--json", "token", "list")))
        except (subprocess.CalledProcessError, ValueError, TypeError):
            return -1


def handoff_restarts(size, runs):
    """Restart -> connected for a daemon whose vault holds `size` tokens; how long filling
    took."""
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        passphrase = root / "passphrase"
        passphrase.write_text(PASSPHRASE)
        os.chmod(passphrase, 0o600)
        a, b = Handoff(root, "a", passphrase), Handoff(root, "b", passphrase)
        a.run("init", "--name", "laptop")
        a.loopback_only()
        a.run("daemon", "start")
        try:
            a.run("unlock")
            offer = subprocess.Popen(
                [str(BIN)] + a.args + ["--json", "peer", "add", "--yes"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            )
            first = json.loads(offer.stdout.readline())
            b.run("--json", "peer", "join", first["code"], "--addr", first["addrs"][0], "--yes",
                  "--no-mdns", "--name", "desktop")
            offer.wait(timeout=WAIT)
            b.loopback_only()
            b.run("daemon", "start")
            try:
                filling = time.perf_counter()
                for i in range(size):
                    a.run("token", "add", "openai", "--label", f"t{i}",
                          stdin=f"sk-proj-bench-{i:06}".encode())
                filled = time.perf_counter() - filling
                until(f"{size} tokens on B", lambda: b.token_count() == size, deadline=600,
                      pause=0.2)
                restarts = []
                for _ in range(runs):
                    b.run("daemon", "stop")
                    started = time.perf_counter()
                    b.run("daemon", "start")
                    until("B to reconnect", lambda: b.online("laptop"), pause=0.001)
                    restarts.append((time.perf_counter() - started) * 1000)
            finally:
                subprocess.run([str(BIN)] + b.args + ["daemon", "stop"], capture_output=True,
                               timeout=120)
        finally:
            subprocess.run([str(BIN)] + a.args + ["daemon", "stop"], capture_output=True,
                           timeout=120)
    return restarts, filled


def mesh_figures(sizes):
    """add -> readable p50 and p99 (ms) by vault size, from the mesh bench."""
    env = dict(os.environ, HANDOFF_BENCH_SIZES=",".join(str(s) for s in sizes))
    out = subprocess.run(
        ["cargo", "bench", "--locked", "--bench", "mesh"], cwd=ROOT, env=env,
        capture_output=True, text=True, check=True, timeout=3600,
    ).stdout
    figures = {}
    size = None
    for line in out.splitlines():
        m = re.search(r"add-to-readable latency, (\d+) tokens", line)
        if m:
            size = int(m.group(1))
        m = re.search(r"until B holds it\s+p50 ([\d.]+) ms.*p99 ([\d.]+) ms", line)
        if m and size is not None:
            figures[size] = (float(m.group(1)), float(m.group(2)))
    if not figures:
        raise SystemExit("the mesh bench printed no add-to-readable figures")
    return figures


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,5000", help="vault sizes for restarts")
    parser.add_argument("--mesh-sizes", default="10,5000", help="vault sizes for the mesh bench")
    parser.add_argument("--writes", type=int, default=50)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-mesh", action="store_true", help="skip the mesh bench")
    args = parser.parse_args()
    if shutil.which("syncthing") is None:
        print("SKIPPED: syncthing is not installed (Debian: apt-get install syncthing); "
              "handoff alone: cargo bench --bench mesh")
        return
    if not BIN.is_file():
        sys.exit(f"{BIN} not found: run `cargo build --release` first")
    version = subprocess.run(["syncthing", "--version"], capture_output=True, text=True,
                             timeout=WAIT).stdout.split()[1]

    latencies, st_restarts = syncthing_figures(args.writes, args.runs)
    st_p50, st_p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    st_restart = statistics.median(st_restarts)
    print(f"Syncthing {version} on loopback, {args.writes} writes, {args.runs} restarts:")
    print(f"  write -> visible on B (REST scan at once)  p50 {st_p50:.3f} ms  p99 {st_p99:.3f} ms")
    print(f"  restart -> connected                       median {st_restart:.1f} ms")

    if not args.no_mesh:
        sizes = [int(s) for s in args.mesh_sizes.split(",")]
        print("handoff add -> readable (cargo bench --bench mesh), as ratios to Syncthing's p50:")
        for size, (p50, p99) in sorted(mesh_figures(sizes).items()):
            print(f"  {size:>5} tokens  p50 {p50:.3f} ms (x{p50 / st_p50:.2f})  "
                  f"p99 {p99:.3f} ms (x{p99 / st_p99:.2f} of its p99)")

    print("handoff daemon restart -> connected to its peer, as ratios to Syncthing's:")
    first = None
    for size in (int(s) for s in args.sizes.split(",")):
        restarts, filled = handoff_restarts(size, args.runs)
        median = statistics.median(restarts)
        first = first or median
        print(f"  {size:>5} tokens  median {median:.1f} ms (x{median / st_restart:.2f}; "
              f"x{median / first:.2f} of the smallest vault)  filling took {filled:.1f} s")


if __name__ == "__main__":
    main()
