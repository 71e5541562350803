#!/usr/bin/env python3
"""Splits rendered Helm output into built-in kinds and the CRDs kubernetes-validate cannot
know offline (KEDA ScaledObject, Prometheus Operator ServiceMonitor).

  --strip   print only the built-in kinds (for kubernetes-validate --strict)
  --check   check the CRDs' required fields (what the operators reject) and that each
            targets a Deployment / Service this render defines
"""
import sys

import yaml

CRDS = {("keda.sh/v1alpha1", "ScaledObject"), ("monitoring.coreos.com/v1", "ServiceMonitor")}


def main(mode):
    docs = [d for d in yaml.safe_load_all(sys.stdin) if d]
    crds = [d for d in docs if (d.get("apiVersion"), d.get("kind")) in CRDS]
    builtin = [d for d in docs if (d.get("apiVersion"), d.get("kind")) not in CRDS]
    if mode == "--strip":
        yaml.safe_dump_all(builtin, sys.stdout, sort_keys=False)
        return
    deployments = {d["metadata"]["name"] for d in builtin if d["kind"] == "Deployment"}
    services = {d["metadata"]["name"]: d for d in builtin if d["kind"] == "Service"}
    kinds = {d["kind"] for d in crds}
    if kinds != {"ScaledObject", "ServiceMonitor"}:
        sys.exit(f"expected a ScaledObject and ServiceMonitors, found {sorted(kinds)}")
    for d in crds:
        name = d["metadata"]["name"]
        spec = d["spec"]
        if d["kind"] == "ScaledObject":
            if spec["scaleTargetRef"]["name"] not in deployments:
                sys.exit(f"{name}: scales a Deployment that does not exist")
            for t in spec["triggers"]:
                meta = t["metadata"]
                lane_lists = (":pending", ":pending:high", ":pending:low")
                if t["type"] != "redis" or not meta.get("address") or not meta.get("listName", "").endswith(lane_lists):
                    sys.exit(f"{name}: redis trigger needs address and one of the role's pending lists")
            lists = {t["metadata"]["listName"].split("}", 1)[1] for t in spec["triggers"]}
            if lists != set(lane_lists):
                sys.exit(f"{name}: triggers must cover every priority lane, found {sorted(lists)}")
                int(meta["listLength"])
            if not 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]:
                sys.exit(f"{name}: replica bounds")
        else:
            labels = spec["selector"]["matchLabels"]
            if not any(all(s["metadata"]["labels"].get(k) == v for k, v in labels.items()) for s in services.values()):
                sys.exit(f"{name}: selects no Service of this release")
            if not any(e.get("port") == "metrics" for e in spec["endpoints"]):
                sys.exit(f"{name}: no endpoint on the metrics port")
    print(f"{len(crds)} CRD objects OK")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "--check")
