#!/usr/bin/env python3
"""Checks the parts of the Grafana dashboard JSON that provisioning and our panels rely on.

Run: python3 deploy/grafana/check_dashboard.py deploy/grafana/dashboards/agentfleet.json
The type-level check against Grafana's published schema is deploy/grafana/schema-check
(tsc over @grafana/schema); this one catches what types cannot: duplicate ids, panels
without queries, overlapping or off-grid panels, datasource wiring.
"""
import json
import sys


def fail(msg):
    print(f"dashboard: {msg}", file=sys.stderr)
    sys.exit(1)


def main(path):
    with open(path) as f:
        d = json.load(f)
    for key in ("uid", "title", "schemaVersion", "panels", "templating"):
        if key not in d:
            fail(f"missing top-level {key!r}")
    if not isinstance(d["schemaVersion"], int) or d["schemaVersion"] < 36:
        fail("schemaVersion must be an integer >= 36")
    names = [v["name"] for v in d["templating"]["list"]]
    if "datasource" not in names:
        fail("no datasource template variable")
    ids, cells = set(), set()
    for p in d["panels"]:
        pid = p.get("id")
        if not isinstance(pid, int) or pid in ids:
            fail(f"panel id {pid!r} missing or duplicated")
        ids.add(pid)
        g = p.get("gridPos", {})
        if not all(isinstance(g.get(k), int) for k in ("x", "y", "w", "h")):
            fail(f"panel {pid}: gridPos needs integer x, y, w, h")
        if g["x"] < 0 or g["w"] < 1 or g["x"] + g["w"] > 24:
            fail(f"panel {pid}: gridPos outside the 24-column grid")
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                if (x, y) in cells:
                    fail(f"panel {pid} overlaps another panel at ({x}, {y})")
                cells.add((x, y))
        if p.get("datasource", {}).get("uid") != "${datasource}":
            fail(f"panel {pid}: datasource must be the ${{datasource}} variable")
        targets = p.get("targets") or []
        if not targets:
            fail(f"panel {pid} ({p.get('title')}) has no queries")
        refs = set()
        for t in targets:
            if not t.get("expr", "").strip():
                fail(f"panel {pid}: a target without expr")
            if not t.get("refId") or t["refId"] in refs:
                fail(f"panel {pid}: refId missing or duplicated")
            refs.add(t["refId"])
            if "agentfleet_" not in t["expr"]:
                fail(f"panel {pid}: query does not use agentfleet metrics: {t['expr']}")
    print(f"dashboard: {len(ids)} panels OK")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "deploy/grafana/dashboards/agentfleet.json")
