#!/usr/bin/env python3
"""make e2e-observability: a real Prometheus scrapes two running fleets (two namespaces) under
load, and every query of the Grafana dashboard, with its Fleet variable set to one of them,
must return data through Prometheus's HTTP API, and only that fleet's series.

Uses the release binaries (make build), `prometheus` from PATH, and the Redis at REDIS_URL
(default redis://127.0.0.1:6379). Everything it starts is stopped at the end; each fleet runs
in a namespace of its own, deleted afterwards.
"""
import json
import os
import random
import re
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
SUFFIX = "".join(random.choices(string.ascii_lowercase, k=6))
# Two fleets on one Redis and one Prometheus: the dashboard must keep them apart.
NAMESPACES = [f"obs-a-{SUFFIX}", f"obs-b-{SUFFIX}"]
SELECTOR = re.compile(r"agentfleet_[a-z_]+\{[^}]*\}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.load(r)


def substitute(expr, namespace, role=".*", instance=".*"):
    """The query as Grafana sends it with the variables set."""
    return (expr.replace("$__rate_interval", "10s").replace("$namespace", namespace)
            .replace("$role", role).replace("$instance", instance))


def query(api, expr):
    q = urllib.parse.urlencode({"query": expr})
    try:
        return get_json(f"{api}/query?{q}")
    except OSError as e:
        return {"status": "error", "error": str(e)}


def main():
    procs = []
    tmp = tempfile.mkdtemp(prefix="agentfleet-obs-")

    def start(args, log, namespace):
        env = dict(os.environ, REDIS_URL=REDIS_URL, AGENTFLEET_NAMESPACE=namespace)
        p = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, log), "w"))
        procs.append(p)
        return p

    try:
        # Guardrails no answer of the mock breaks: the guardrail panels have series to show.
        guardrails = os.path.join(tmp, "guardrails.toml")
        with open(guardrails, "w") as f:
            f.write('[reasoning.input]\nmax_chars = 100000\n[synthesis.output]\nmax_chars = 1000000\n')
        # namespace -> role -> port
        fleets = {ns: {"reasoning": free_port(), "synthesis": free_port()} for ns in NAMESPACES}
        for ns, ports in fleets.items():
            for role, port in ports.items():
                extra = ["--mock-fail-rate", "0.2", "--backoff-base-ms", "20", "--backoff-max-ms", "200", "--max-attempts", "3"] if role == "reasoning" else []
                start([os.path.join(BIN, f"{role}-worker"), "--metrics-addr", f"127.0.0.1:{port}",
                       "--concurrency", "100", "--mock-latency-ms", "30",
                       # A limit far above the rate and a budget far above the spend: the limits
                       # panels (reservations, budget used) have series to show.
                       "--rpm", "100000000", "--budget-daily-usd", "1000000",
                       "--guardrails", guardrails, *extra], f"{ns}-{role}.log", ns)
        instances = {ns: {f"127.0.0.1:{port}" for port in ports.values()} for ns, ports in fleets.items()}

        prom_port = free_port()
        shutil.copy(ALERTS, os.path.join(tmp, "alerts.yml"))
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": ["alerts.yml"],
            "scrape_configs": [{
                "job_name": "agentfleet",
                "static_configs": [
                    {"targets": [f"127.0.0.1:{port}"], "labels": {"role": role}}
                    for ports in fleets.values() for role, port in ports.items()
                ],
            }],
        }
        with open(os.path.join(tmp, "prometheus.yml"), "w") as f:
            json.dump(config, f)  # JSON is YAML
        start(["prometheus", f"--config.file={tmp}/prometheus.yml", f"--storage.tsdb.path={tmp}/data",
               f"--web.listen-address=127.0.0.1:{prom_port}"], "prometheus.log", NAMESPACES[0])
        api = f"http://127.0.0.1:{prom_port}/api/v1"

        want = sum(len(p) for p in fleets.values())
        deadline = time.time() + 30
        while True:
            try:
                targets = get_json(f"{api}/targets")["data"]["activeTargets"]
                if len(targets) == want and all(t["health"] == "up" for t in targets):
                    break
            except OSError:
                pass
            if time.time() > deadline:
                sys.exit("prometheus targets did not come up; see " + tmp)
            time.sleep(0.5)
        print(f"prometheus: all {want} worker targets of {len(fleets)} fleets up")

        # Load: a steady stream of tasks into both fleets while the queries run.
        loaders = [start([os.path.join(BIN, "agentfleet"), "enqueue", "--count", str(n), "--prompt", "observe"],
                         f"{ns}-load.log", ns)
                   for ns, n in zip(NAMESPACES, (20000, 8000))]
        time.sleep(8)

        # The Fleet variable lists both fleets.
        q = urllib.parse.urlencode({"match[]": "agentfleet_worker_info"})
        listed = set(get_json(f"{api}/label/namespace/values?{q}")["data"])
        if not set(NAMESPACES) <= listed:
            sys.exit(f"the namespace variable's values {listed} miss a fleet of {NAMESPACES}")

        dashboard = json.load(open(DASHBOARD))
        failures = []
        queries = 0
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                for ns in NAMESPACES:
                    queries += 1
                    expr = substitute(target["expr"], ns)
                    if "$" in expr:
                        failures.append((panel["title"], expr, "a variable the dashboard does not define"))
                        continue
                    ok = False
                    for _ in range(30):
                        reply = query(api, expr)
                        if reply.get("status") == "success" and reply["data"]["result"]:
                            ok = True
                            break
                        time.sleep(1)
                    # Only this fleet's series feed the query: every selector in it, as
                    # the dashboard sends it, matches series of this fleet alone.
                    foreign = []
                    for selector in SELECTOR.findall(target["expr"]):
                        raw = query(api, substitute(selector, ns))
                        for series in raw.get("data", {}).get("result", []):
                            labels = series["metric"]
                            if labels.get("namespace") != ns or labels.get("instance") not in instances[ns]:
                                foreign.append(labels)
                    status = "ok" if ok and not foreign else ("FOREIGN" if foreign else "NO DATA")
                    print(f"  {status:8} {ns} {panel['title']} [{target['refId']}]: {expr}")
                    if not ok:
                        failures.append((panel["title"], expr, reply))
                    if foreign:
                        failures.append((panel["title"], expr, f"series of another fleet: {foreign[:3]}"))

        # The Instance variable narrows every selector to one worker.
        ns = NAMESPACES[0]
        one = f"127.0.0.1:{fleets[ns]['reasoning']}"
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                for selector in SELECTOR.findall(target["expr"]):
                    raw = query(api, substitute(selector, ns, instance=re.escape(one)))
                    others = [s["metric"] for s in raw.get("data", {}).get("result", [])
                              if s["metric"].get("instance") != one]
                    if others:
                        failures.append((panel["title"], selector, f"instance filter let through {others[:3]}"))
        for loader in loaders:
            loader.wait(timeout=120)
        if failures:
            for title, expr, reply in failures:
                print(f"FAILED {title}: {expr}\n  {reply}", file=sys.stderr)
            sys.exit(1)
        print(f"e2e-observability: every dashboard query returned data, and only its fleet's series, for each of {len(NAMESPACES)} fleets ({queries} queries)")
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        for ns in NAMESPACES:
            cleanup_namespace(ns)
        shutil.rmtree(tmp, ignore_errors=True)


def cleanup_namespace(namespace):
    """Deletes the fleet's keys through the CLI (only crates/queue knows key names)."""
    subprocess.run(
        [os.path.join(BIN, "agentfleet"), "delete-namespace", "--namespace", namespace, "--yes"],
        env={**os.environ, "REDIS_URL": REDIS_URL},
        stdout=subprocess.DEVNULL,
        check=False,
    )


if __name__ == "__main__":
    main()
