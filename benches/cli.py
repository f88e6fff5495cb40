#!/usr/bin/env python3
"""End-to-end CLI timings of the release binary on a temporary home, as ratios to a baseline
measured in the same run: `handoff --version` (process start, nothing opened).

Usage: cargo build --release --workspace && python3 benches/cli.py [runs] [other-handoff-binary]
Bounded: `runs` (default 20) invocations per command, each under a 60 s timeout.

With a second binary (say, a release build of an earlier commit), the rows are measured for
both, one after the other in the same run, and each row of this build is also shown as a
ratio to the same row of the other.
"""
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 20
BIN = pathlib.Path(__file__).resolve().parent.parent / "target" / "release" / "handoff"
OTHER = pathlib.Path(sys.argv[2]).resolve() if len(sys.argv) > 2 else None
if not BIN.is_file():
    sys.exit(f"{BIN} not found: run `cargo build --release` first")
if OTHER is not None and not OTHER.is_file():
    sys.exit(f"{OTHER} not found")


def measure(BIN):
    """The baseline and every row for the binary BIN, on a fresh home."""
    with tempfile.TemporaryDirectory() as tmp:
        passphrase = pathlib.Path(tmp, "passphrase")
        passphrase.write_text("benchmark passphrase\n")
        os.chmod(passphrase, 0o600)
        home = ["--home", str(pathlib.Path(tmp, "home")), "--passphrase-file", str(passphrase)]

        def run(args, stdin=None, program=None):
            argv = [program] if program else [str(BIN)] + args
            subprocess.run(argv, input=stdin, capture_output=True, check=True, timeout=60)

        def median_ms(args, stdin=None, with_home=True, program=None):
            samples = []
            for i in range(RUNS):
                argv = [a.replace("{i}", str(i)) for a in args]
                start = time.perf_counter()
                run((home if with_home else []) + argv, stdin, program)
                samples.append((time.perf_counter() - start) * 1000)
            return statistics.median(samples)

        run(home + ["init", "--name", "bench"])
        # Both homes stay on loopback and off the LAN.
        pathlib.Path(tmp, "home", "config.toml").write_text(
            '[net]\nlisten = ["/ip4/127.0.0.1/tcp/0"]\nmdns = false\n'
        )
        # A stand-in agent that exits at once: the spawn rows minus "agent alone" is handoff's own
        # time from `handoff spawn` to the agent's exec (unlock, decrypt, materialize, fork/exec).
        bindir = pathlib.Path(tmp, "bin")
        bindir.mkdir()
        for agent in ("claude", "codex"):
            path = bindir / agent
            # `--refresh`: rewrites its Codex login the way codex does (a new file renamed over
            # the old one), so the session ends with a write-back.
            path.write_text(
                "#!/bin/sh\n"
                "if [ \"$1\" = --refresh ]; then\n"
                "  printf '{\"tokens\":{\"access_token\":\"a%s\",\"refresh_token\":\"r%s\",\"account_id\":\"x\"}}' $$ $$ > \"$CODEX_HOME/auth.json.tmp\"\n"
                "  mv \"$CODEX_HOME/auth.json.tmp\" \"$CODEX_HOME/auth.json\"\n"
                "fi\n"
                "exit 0\n"
            )
            os.chmod(path, 0o755)
        # The user's own agent directories, which the private ones mirror.
        user = pathlib.Path(tmp, "user")
        (user / ".codex").mkdir(parents=True)
        (user / ".codex" / "config.toml").write_text('model = "o3"\n')
        os.environ["HOME"] = str(user)
        os.environ["PATH"] = f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}"
        run(home + ["token", "add", "openai-codex"], b'{"tokens":{"access_token":"bench"}}')
        run(home + ["token", "add", "anthropic", "--label", "spawn"], b"sk-ant-api03-bench")
        # A Codex login with a refresh token: leased to each session, written back when changed.
        run(
            home + ["token", "add", "openai-codex", "--label", "login"],
            b'{"tokens":{"access_token":"bench","refresh_token":"r0","account_id":"x"}}',
        )
        login = ["spawn", "codex", "--profile", "login"]
        base = median_ms(["--version"], with_home=False)
        rows = [
            ("token add", median_ms(["token", "add", "anthropic", "--label", "l{i}"], b"sk-ant-api03-" + b"x" * 90)),
            ("token list", median_ms(["token", "list"])),
            ("token show --reveal", median_ms(["token", "show", "anthropic/l3", "--reveal"])),
            ("status", median_ms(["status"])),
            ("agent alone", median_ms([], with_home=False, program=str(bindir / "claude"))),
            ("spawn claude (env)", median_ms(["spawn", "claude"])),
            ("spawn codex (files)", median_ms(["spawn", "codex", "--service", "openai-codex"])),
            ("spawn codex (OAuth login)", median_ms(login)),
            ("spawn codex + write-back", median_ms(login + ["--", "--refresh"])),
            ("spawn --service-auth native", median_ms(["spawn", "claude", "--service-auth", "native"])),
        ]
        # The same commands through a running, unlocked daemon.
        run(home + ["daemon", "start"])
        try:
            run(home + ["unlock", "--for", "10m"])
            rows += [
                ("daemon: token list", median_ms(["token", "list"])),
                ("daemon: token show --reveal", median_ms(["token", "show", "anthropic/l3", "--reveal"])),
                ("daemon: spawn claude (env)", median_ms(["spawn", "claude"])),
                ("daemon: spawn codex (files)", median_ms(["spawn", "codex", "--service", "openai-codex"])),
                ("daemon: spawn codex (OAuth login)", median_ms(login)),
                ("daemon: spawn codex + write-back", median_ms(login + ["--", "--refresh"])),
            ]
            if remote_spawn_supported(BIN):
                rows += remote_rows(tmp, home, run, median_ms)
        finally:
            run(home + ["daemon", "stop"])
        return base, rows


def remote_spawn_supported(binary):
    help = subprocess.run([str(binary), "spawn", "--help"], capture_output=True, timeout=60)
    return b"--on" in help.stdout


def remote_rows(tmp, home, run, median_ms):
    """A second device, paired with a code, asks this one over loopback for sessions:
    `spawn --on`, against the same detached spawn started here."""
    import json
    offer = subprocess.Popen(
        [str(BIN)] + home + ["--json", "peer", "add", "--yes"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )
    first = json.loads(offer.stdout.readline())
    other = ["--home", str(pathlib.Path(tmp, "other")), "--passphrase-file", home[3]]
    run(other + ["--json", "peer", "join", first["code"], "--addr", first["addrs"][0],
                 "--yes", "--no-mdns", "--name", "asker"])
    offer.wait(timeout=60)
    pathlib.Path(tmp, "other", "config.toml").write_text(
        '[net]\nlisten = ["/ip4/127.0.0.1/tcp/0"]\nmdns = false\n'
    )
    root = pathlib.Path(tmp, "projects")
    root.mkdir()
    run(home + ["spawn-policy", "allow", "asker", "--agent", "claude", "--root", str(root)])
    run(other + ["daemon", "start"])
    try:
        ask = ["spawn", "claude", "--on", "bench", "--dir", str(root), "--profile", "spawn"]
        deadline = time.time() + 30
        while subprocess.run([str(BIN)] + other + ask, capture_output=True, timeout=60).returncode:
            if time.time() > deadline:
                raise SystemExit("the asker never reached this device")
            time.sleep(0.2)
        local = ["spawn", "claude", "--detach", "--dir", str(root), "--profile", "spawn"]
        rows = [
            ("daemon: spawn --detach (here)", median_ms(local)),
            # At most 20 requests a minute per asker (both rows together): fewer samples.
            ("spawn --on (asked over the mesh)", median_remote(other + ask, 8)),
        ]
        relayed = relay_row(tmp, home, other, ask, run)
        if relayed is not None:
            rows.append(relayed)
        return rows
    finally:
        run(other + ["daemon", "stop"])


def relay_row(tmp, home, other, ask, run):
    """The same request through a relay on loopback, the two daemons never dialling each
    other. Needs the relay binary (`cargo build --release --workspace`)."""
    import json
    relay_bin = BIN.with_name("handoff-relay")
    if not relay_bin.is_file():
        print(f"(no relay row: {relay_bin} not built; `cargo build --release --workspace`)")
        return None
    token = pathlib.Path(tmp, "relay-token")
    token.write_text("bench relay token\n")
    os.chmod(token, 0o600)
    relay = subprocess.Popen(
        [str(relay_bin), "serve", "--listen", "/ip4/127.0.0.1/tcp/0", "--db",
         str(pathlib.Path(tmp, "relay.db")), "--access", "token", "--token-file", str(token)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        addr = None
        for line in relay.stdout:
            if line.startswith("listening on "):
                addr = line.split(" ", 2)[2].strip()
                break
        if addr is None:
            raise SystemExit("the relay did not start")
        run(home + ["relay", "add", addr, "--token-file", str(token)])
        no_dial = '[net]\nlisten = ["/ip4/127.0.0.1/tcp/0"]\nmdns = false\ndial_known = false\n'
        run(other + ["daemon", "stop"])
        run(home + ["daemon", "stop"])
        for h in ("home", "other"):
            pathlib.Path(tmp, h, "config.toml").write_text(no_dial)
        run(home + ["daemon", "start"])
        run(home + ["unlock", "--for", "10m"])
        run(other + ["daemon", "start"])
        # A new minute, so the mesh row's requests leave the asker its whole share.
        time.sleep(61 - time.time() % 60)
        deadline = time.time() + 60
        while True:
            out = subprocess.run([str(BIN)] + other + ["--json"] + ask, capture_output=True,
                                 timeout=120)
            if out.returncode == 0 and json.loads(out.stdout).get("relayed"):
                break
            if time.time() > deadline:
                raise SystemExit(f"no relayed answer: {out.stderr.decode().strip()}")
            time.sleep(0.5)
        # Every sample must have gone through the relay (a direct connection would be faster).
        return ("spawn --on (through the relay)",
                median_remote(other + ["--json"] + ask, 8, must_contain=b'"relayed":true'))
    finally:
        relay.terminate()
        relay.wait(timeout=30)


def median_remote(argv, n, must_contain=None):
    samples = []
    for _ in range(min(RUNS, n)):
        start = time.perf_counter()
        out = subprocess.run([str(BIN)] + argv, capture_output=True, check=True, timeout=120)
        samples.append((time.perf_counter() - start) * 1000)
        if must_contain is not None and must_contain not in out.stdout.replace(b" ", b""):
            raise SystemExit(f"a sample did not go the way it measures: {out.stdout!r}")
    return statistics.median(samples)


base, rows = measure(BIN)
other = measure(OTHER) if OTHER is not None else None
print(f"baseline `handoff --version`: {base:.1f} ms (median of {RUNS})")
for i, (name, ms) in enumerate(rows):
    line = f"  {name:<30} {ms:8.1f} ms   x{ms / base:.1f} of baseline"
    if other is not None and i < len(other[1]):
        line += f"   x{ms / other[1][i][1]:.2f} of {OTHER.name} ({other[1][i][1]:.1f} ms)"
    print(line)
if other is not None:
    print(f"{OTHER}: baseline {other[0]:.1f} ms")
