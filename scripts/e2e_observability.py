#!/usr/bin/env python3
"""make e2e-observability: a real Prometheus scrapes a running fleet under load, and every
query of the Grafana dashboard must return data through Prometheus's HTTP API.

Uses the release binaries (make build), `prometheus` from PATH, and the Redis at REDIS_URL
(default redis://127.0.0.1:6379). Everything it starts is stopped at the end; the fleet runs
in a namespace of its own, deleted afterwards.
"""
import json
import os
import random
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")
DASHBOARD = os.path.join(ROOT, "deploy", "grafana", "dashboards", "agentfleet.json")
ALERTS = os.path.join(ROOT, "deploy", "prometheus", "alerts.yml")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")
NAMESPACE = "obs-" + "".join(random.choices(string.ascii_lowercase, k=6))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.load(r)


def main():
    procs = []
    tmp = tempfile.mkdtemp(prefix="agentfleet-obs-")
    env = dict(os.environ, REDIS_URL=REDIS_URL, AGENTFLEET_NAMESPACE=NAMESPACE)

    def start(args, log):
        p = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, log), "w"))
        procs.append(p)
        return p

    try:
        ports = {"reasoning": free_port(), "synthesis": free_port()}
        # Guardrails no answer of the mock breaks: the guardrail panels have series to show.
        guardrails = os.path.join(tmp, "guardrails.toml")
        with open(guardrails, "w") as f:
            f.write('[reasoning.input]\nmax_chars = 100000\n[synthesis.output]\nmax_chars = 1000000\n')
        for role, port in ports.items():
            extra = ["--mock-fail-rate", "0.2", "--backoff-base-ms", "20", "--backoff-max-ms", "200", "--max-attempts", "3"] if role == "reasoning" else []
            start([os.path.join(BIN, f"{role}-worker"), "--metrics-addr", f"127.0.0.1:{port}",
                   "--concurrency", "100", "--mock-latency-ms", "30",
                   # A limit far above the rate and a budget far above the spend: the limits
                   # panels (reservations, budget used) have series to show.
                   "--rpm", "100000000", "--budget-daily-usd", "1000000",
                   "--guardrails", guardrails, *extra], f"{role}.log")

        prom_port = free_port()
        shutil.copy(ALERTS, os.path.join(tmp, "alerts.yml"))
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": ["alerts.yml"],
            "scrape_configs": [{
                "job_name": "agentfleet",
                "static_configs": [
                    {"targets": [f"127.0.0.1:{port}"], "labels": {"role": role}} for role, port in ports.items()
                ],
            }],
        }
        with open(os.path.join(tmp, "prometheus.yml"), "w") as f:
            json.dump(config, f)  # JSON is YAML
        start(["prometheus", f"--config.file={tmp}/prometheus.yml", f"--storage.tsdb.path={tmp}/data",
               f"--web.listen-address=127.0.0.1:{prom_port}"], "prometheus.log")
        api = f"http://127.0.0.1:{prom_port}/api/v1"

        deadline = time.time() + 30
        while True:
            try:
                targets = get_json(f"{api}/targets")["data"]["activeTargets"]
                if len(targets) == 2 and all(t["health"] == "up" for t in targets):
                    break
            except OSError:
                pass
            if time.time() > deadline:
                sys.exit("prometheus targets did not come up; see " + tmp)
            time.sleep(0.5)
        print("prometheus: both worker targets up")

        # Load: a steady stream of tasks while the queries run.
        loader = start([os.path.join(BIN, "agentfleet"), "enqueue", "--count", "20000", "--prompt", "observe"], "load.log")
        time.sleep(8)

        dashboard = json.load(open(DASHBOARD))
        failures = []
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                expr = target["expr"].replace("$__rate_interval", "10s")
                ok = False
                for _ in range(30):
                    q = urllib.parse.urlencode({"query": expr})
                    try:
                        reply = get_json(f"{api}/query?{q}")
                    except OSError as e:
                        reply = {"status": "error", "error": str(e)}
                    if reply.get("status") == "success" and reply["data"]["result"]:
                        ok = True
                        break
                    time.sleep(1)
                status = "ok" if ok else "NO DATA"
                print(f"  {status:8} {panel['title']} [{target['refId']}]: {expr}")
                if not ok:
                    failures.append((panel["title"], expr, reply))
        loader.wait(timeout=120)
        if failures:
            for title, expr, reply in failures:
                print(f"FAILED {title}: {expr}\n  {reply}", file=sys.stderr)
            sys.exit(1)
        print(f"e2e-observability: every dashboard query returned data ({sum(len(p['targets']) for p in dashboard['panels'])} queries)")
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        cleanup_namespace()
        shutil.rmtree(tmp, ignore_errors=True)


def cleanup_namespace():
    """Deletes the fleet's keys through the CLI (only crates/queue knows key names)."""
    subprocess.run(
        [os.path.join(BIN, "agentfleet"), "delete-namespace", "--namespace", NAMESPACE, "--yes"],
        env={**os.environ, "REDIS_URL": REDIS_URL},
        stdout=subprocess.DEVNULL,
        check=False,
    )


if __name__ == "__main__":
    main()
