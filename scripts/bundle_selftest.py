"""Self-test of the frozen bundle (run by scripts/build_bundle.sh).

    .venv/bin/python scripts/bundle_selftest.py [dist/switchman]

Starts the FROZEN ``switchman daemon`` on a random port with a temporary data
dir and home, proxies one Anthropic request through the built-in simulated
provider (httpx), checks that the admin plane (gRPC), the ledger (SQLAlchemy)
and the console executable (Qt, offscreen) work frozen, then stops the daemon.
Exit code 0 when every step passed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

EXE = ".exe" if os.name == "nt" else ""
failures: list[str] = []


def step(name: str, ok: bool, detail: str = "") -> bool:
    print(f"{'✓' if ok else '✗'} {name}{': ' + detail if detail else ''}", flush=True)
    if not ok:
        failures.append(name)
    return ok


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def main() -> int:
    bundle = Path(sys.argv[1] if len(sys.argv) > 1 else "dist/switchman").resolve()
    switchman = bundle / f"switchman{EXE}"
    console = bundle / f"switchman-console{EXE}"
    if not step("bundle present", switchman.exists() and console.exists(), str(bundle)):
        return 1
    tmp = Path(tempfile.mkdtemp(prefix="switchman-selftest-"))
    data, home = tmp / "data", tmp / "home"
    home.mkdir()
    # a clean user: no config, no keys, no agent settings of the real user
    env = {**os.environ, "HOME": str(home), "USERPROFILE": str(home),
           "SWITCHMAN_DATA_DIR": str(data), "SWITCHMAN_CONFIG": str(tmp / "absent.toml"),
           "XDG_CONFIG_HOME": str(home / ".config"), "XDG_DATA_HOME": str(home / ".local"),
           "QT_QPA_PLATFORM": "offscreen"}
    port = free_port()
    log = tmp / "daemon.log"
    t0 = time.monotonic()
    proc = subprocess.Popen([str(switchman), "daemon", "--port", str(port), "--data-dir",
                             str(data), "--sim-time-scale", "0", "--log-file", str(log)],
                            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        up = False
        while time.monotonic() - t0 < 60 and proc.poll() is None:
            with contextlib.suppress(httpx.HTTPError):
                up = httpx.get(f"{base}/healthz", timeout=1).status_code == 200
            if up:
                break
            time.sleep(0.2)
        if not step("frozen daemon starts", up, f"{time.monotonic() - t0:.1f} s, port {port}"):
            return 1
        r = httpx.post(f"{base}/v1/messages", timeout=30,
                       headers={"x-api-key": "selftest", "anthropic-version": "2023-06-01"},
                       json={"model": "claude-sonnet-4-5", "max_tokens": 32,
                             "messages": [{"role": "user", "content": "Say hello."}]})
        body = r.json() if r.headers.get("content-type", "").startswith("application/json") \
            else {}
        text = "".join(b.get("text", "") for b in body.get("content", []))
        step("request proxied through the sim provider", r.status_code == 200 and bool(text),
             f"HTTP {r.status_code}, served by {body.get('model')}, "
             f"{body.get('usage', {}).get('output_tokens')} output tokens")

        st = run([str(switchman), "status", "--data-dir", str(data)], env)
        step("admin plane (gRPC) answers `switchman status`",
             st.returncode == 0 and f":{port}" in st.stdout, st.stdout.splitlines()[1]
             if st.returncode == 0 and len(st.stdout.splitlines()) > 1 else st.stderr.strip())

        rows: list[str] = []
        for _ in range(20):  # the ledger writer batches for ~50 ms
            ex = run([str(switchman), "ledger", "export", "--format", "jsonl", "--data-dir",
                      str(data)], env)
            rows = [ln for ln in ex.stdout.splitlines() if ln.strip()]
            if rows and '"open"' not in rows[-1]:
                break
            time.sleep(0.25)
        step("ledger row written (SQLite)", len(rows) == 1, f"{len(rows)} row(s)")

        ver = run([str(console), "-m", "switchman_daemon.cli", "--version"], env)
        step("console executable runs the CLI", ver.returncode == 0,
             (ver.stdout or ver.stderr).strip())
        # the console itself, offscreen: it must import Qt and stay up
        gui = subprocess.Popen([str(console), "--data-dir", str(data)], env=env,
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
        try:
            gui.wait(8)
            out = gui.stdout.read().decode(errors="replace") if gui.stdout else ""
            step("console starts (Qt, offscreen)", False,
                 f"exited {gui.returncode}: {out.strip()[-400:]}")
        except subprocess.TimeoutExpired:
            step("console starts (Qt, offscreen)", True, "running after 8 s")
            gui.kill()
            gui.wait(10)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM if os.name != "nt" else signal.CTRL_BREAK_EVENT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        code = proc.returncode
        out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    step("daemon stops cleanly", code == 0, f"exit code {code}")
    step("daemon logged to its rotating file", log.exists() and "listening" in log.read_text(),
         str(log))
    if failures:
        print("daemon stdout/stderr:\n" + out[-2000:])
        print(f"\nFAILED: {', '.join(failures)}")
        return 1
    print("\nbundle self-test passed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
