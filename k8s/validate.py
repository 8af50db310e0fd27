#!/usr/bin/env python3
"""Validate TTG's Kubernetes manifests offline (no cluster needed).

For each overlay: render it with `kubectl kustomize`, then
  1. check every object against the Kubernetes JSON schemas of a pinned
     version in strict mode (kubernetes-validate), and the KEDA ScaledObject
     against k8s/schemas/keda-scaledobject.json — an object with no schema fails;
  2. make the checks a schema cannot: selectors match pod labels, Services
     point at ports that exist, referenced ConfigMaps/Secrets exist in the
     render (or are declared external), probe ports exist, PDBs do not
     contradict replica counts, the ScaledObject targets an existing
     Deployment and no HPA shares it, agents' grace period exceeds their
     drain timeout, and every container runs non-root with a read-only root
     filesystem, no capabilities and resource requests and limits.

Usage: k8s/validate.py [--k8s-version 1.32.0]   (exit 1 on any problem)
"""

import argparse
import json
import os
import re
import subprocess
import sys

import jsonschema
import kubernetes_validate
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
# overlay -> Secrets it expects to be created out of band
OVERLAYS = {
    "overlays/kind": set(),
    "overlays/kind-tracing": set(),
    "overlays/aks": {"ttg-tokens"},
    "overlays/aks-dashboard": {"ttg-tokens", "ttg-dashboard-tls"},
    "overlays/aks-redis-cluster": {"ttg-tokens", "ttg-redis"},
}
EXTRA_FILES = {"jobs/sweep.yaml": {"ttg-tokens"}}
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "Job")


def render(path):
    out = subprocess.run(["kubectl", "kustomize", os.path.join(HERE, path)], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"kubectl kustomize {path} failed:\n{out.stderr}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def pod_spec(obj):
    if obj["kind"] == "Job":
        return obj["spec"]["template"]["spec"], obj["spec"]["template"]["metadata"].get("labels", {})
    t = obj["spec"]["template"]
    return t["spec"], t["metadata"].get("labels", {})


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def name(obj):
    return f'{obj["kind"]}/{obj["metadata"]["name"]}'


def duration_s(text):
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", text or "")
    if not m:
        return None
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def check(objs, external, version, keda_schema):
    problems = []
    err = problems.append
    by_kind = {}
    for o in objs:
        by_kind.setdefault(o["kind"], []).append(o)

    # 1. schemas
    for o in objs:
        if o["kind"] == "ScaledObject":
            for e in jsonschema.Draft202012Validator(keda_schema).iter_errors(o):
                err(f"{name(o)}: {'/'.join(map(str, e.path))}: {e.message}")
            continue
        try:
            kubernetes_validate.validate(o, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError as e:
            err(f"{name(o)}: no schema for {o.get('apiVersion')} {o['kind']} in Kubernetes {version}: {e}")
        except kubernetes_validate.ValidationError as e:
            err(f"{name(o)}: {'/'.join(map(str, e.path))}: {e.message}")
        except Exception as e:  # the library's other errors name the object too
            err(f"{name(o)}: {e}")

    workloads = [o for k in WORKLOADS for o in by_kind.get(k, [])]
    pods = [(o, *pod_spec(o)) for o in workloads]
    configmaps = {o["metadata"]["name"]: o for o in by_kind.get("ConfigMap", [])}
    secrets = {o["metadata"]["name"] for o in by_kind.get("Secret", [])} | external

    # 2a. selectors match their own pod labels
    for o, _, labels in pods:
        sel = o["spec"].get("selector", {}).get("matchLabels")
        if o["kind"] != "Job" and not matches(sel, labels):
            err(f"{name(o)}: selector {sel} does not match its pod labels {labels}")

    # 2b. Services select pods and point at ports that exist
    for s in by_kind.get("Service", []):
        sel = s["spec"].get("selector", {})
        targets = [(o, spec) for o, spec, labels in pods if matches(sel, labels)]
        if not targets:
            err(f"{name(s)}: selector {sel} matches no pod")
            continue
        for p in s["spec"]["ports"]:
            tp = p.get("targetPort", p["port"])
            for o, spec in targets:
                ports = [cp for c in spec["containers"] for cp in c.get("ports", [])]
                if not any(cp.get("name") == tp or cp["containerPort"] == tp for cp in ports):
                    err(f"{name(s)}: port {p.get('name', p['port'])} targets {tp!r}, which {name(o)} does not expose")

    # 2c. referenced ConfigMaps/Secrets exist; 2d. probe ports exist; 2i. hardening
    for o, spec, _ in pods:
        vols = spec.get("volumes", []) + [
            {"name": t["metadata"]["name"]} for t in o["spec"].get("volumeClaimTemplates", [])
        ]
        for v in vols:
            if "configMap" in v and v["configMap"]["name"] not in configmaps:
                err(f"{name(o)}: volume {v['name']} needs ConfigMap {v['configMap']['name']}, not in the render")
            if "secret" in v and v["secret"]["secretName"] not in secrets:
                err(f"{name(o)}: volume {v['name']} needs Secret {v['secret']['secretName']}, not in the render")
        pod_sc = spec.get("securityContext", {})
        for c in spec["containers"] + spec.get("initContainers", []):
            where = f"{name(o)} container {c['name']}"
            for ef in c.get("envFrom", []):
                if "configMapRef" in ef and ef["configMapRef"]["name"] not in configmaps:
                    err(f"{where}: envFrom ConfigMap {ef['configMapRef']['name']} not in the render")
                if "secretRef" in ef and ef["secretRef"]["name"] not in secrets:
                    err(f"{where}: envFrom Secret {ef['secretRef']['name']} not in the render")
            for e in c.get("env", []):
                vf = e.get("valueFrom", {})
                if "configMapKeyRef" in vf:
                    ref = vf["configMapKeyRef"]
                    cm = configmaps.get(ref["name"])
                    if cm is None or ref["key"] not in cm.get("data", {}):
                        err(f"{where}: env {e['name']} needs ConfigMap {ref['name']} key {ref['key']}")
                if "secretKeyRef" in vf and vf["secretKeyRef"]["name"] not in secrets:
                    err(f"{where}: env {e['name']} needs Secret {vf['secretKeyRef']['name']}, not in the render")
            for vm in c.get("volumeMounts", []):
                if not any(v["name"] == vm["name"] for v in vols):
                    err(f"{where}: mounts volume {vm['name']}, which the pod does not declare")
            ports = c.get("ports", [])
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                pr = c.get(probe)
                if not pr:
                    continue
                for kind in ("grpc", "httpGet", "tcpSocket"):
                    if kind in pr:
                        port = pr[kind]["port"]
                        if not any(p.get("name") == port or p["containerPort"] == port for p in ports):
                                                        err(f"{where}: {probe} uses port {port!r}, which the container does not declare")
            sc = c.get("securityContext", {})
            if not (sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) and (sc.get("runAsUser", pod_sc.get("runAsUser", 1)) != 0)):
                err(f"{where}: must run as non-root (runAsNonRoot and a non-zero runAsUser)")
            if not sc.get("readOnlyRootFilesystem"):
                err(f"{where}: root filesystem must be read-only")
            if sc.get("allowPrivilegeEscalation", True):
                err(f"{where}: allowPrivilegeEscalation must be false")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                err(f"{where}: must drop ALL capabilities")
            res = c.get("resources", {})
            for part in ("requests", "limits"):
                if not {"cpu", "memory"} <= set(res.get(part, {})):
                    err(f"{where}: needs cpu and memory {part}")

    # 2e. PDBs select pods and do not contradict replica counts
    for pdb in by_kind.get("PodDisruptionBudget", []):
        sel = pdb["spec"]["selector"]["matchLabels"]
        targets = [o for o, _, labels in pods if matches(sel, labels)]
        if not targets:
            err(f"{name(pdb)}: selector {sel} matches no pod")
        for o in targets:
            reps = o["spec"].get("replicas", 1)
            mina = pdb["spec"].get("minAvailable")
            if isinstance(mina, int) and mina >= reps:
                err(f"{name(pdb)}: minAvailable {mina} with {name(o)} at {reps} replicas forbids every voluntary disruption")

    # 2f. autoscaling: the ScaledObject's target exists; never KEDA and an HPA on one target
    hpa_targets = {h["spec"]["scaleTargetRef"]["name"] for h in by_kind.get("HorizontalPodAutoscaler", [])}
    deployments = {o["metadata"]["name"] for o in by_kind.get("Deployment", [])}
    for so in by_kind.get("ScaledObject", []):
        t = so["spec"]["scaleTargetRef"]["name"]
        if t not in deployments:
            err(f"{name(so)}: scales {t}, not a Deployment in the render")
        if t in hpa_targets:
            err(f"{name(so)}: {t} also has a HorizontalPodAutoscaler; KEDA creates its own, never both")
        ns = so["metadata"].get("namespace")
        for tr in so["spec"]["triggers"]:
            addr = tr["metadata"].get("address", "")
            if ns and addr and ".svc" in addr and f".{ns}.svc" not in addr:
                err(f"{name(so)}: trigger address {addr} is not in namespace {ns}")

    # 2g. NetworkPolicies select pods
    for np in by_kind.get("NetworkPolicy", []):
        sel = np["spec"]["podSelector"].get("matchLabels", {})
        if not any(matches(sel, labels) for _, _, labels in pods):
            err(f"{name(np)}: podSelector {sel} matches no pod")

    # 2h. agents drain before they are killed
    cfg = configmaps.get("ttg-config", {}).get("data", {})
    drain = duration_s(cfg.get("TTG_DRAIN_TIMEOUT", "30s"))
    for o, spec, labels in pods:
        if labels.get("app.kubernetes.io/name") == "ttg-agent":
            grace = spec.get("terminationGracePeriodSeconds", 30)
            if drain is None or grace <= drain:
                err(f"{name(o)}: terminationGracePeriodSeconds {grace} must exceed TTG_DRAIN_TIMEOUT {cfg.get('TTG_DRAIN_TIMEOUT')}")
    return problems


def self_test(version, keda):
    """Break a good render in the ways the checks exist for; each must be caught."""
    import copy

    good = render("overlays/kind")
    assert not check(good, set(), version, keda), "the kind overlay must pass before the self-test"

    def find(objs, kind, nm):
        return next(o for o in objs if o["kind"] == kind and o["metadata"]["name"] == nm)

    def server(o):
        return find(o, "Deployment", "ttg-server")["spec"]["template"]["spec"]["containers"][0]

    cases = {
        "unknown field (strict schema)": lambda o: server(o).__setitem__("imagePullPolicyy", "Always"),
        "object with no schema": lambda o: o.append({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}),
        "KEDA scaling on a tasks stream": lambda o: find(o, "ScaledObject", "ttg-agent")["spec"]["triggers"][0].update(type="redis-streams"),
        "KEDA scaling on another metric": lambda o: find(o, "ScaledObject", "ttg-agent")["spec"]["triggers"][0]["metadata"].update(valueLocation="ttg_queue_pending"),
        "selector not matching pods": lambda o: find(o, "Deployment", "ttg-agent")["spec"]["selector"]["matchLabels"].update({"x": "y"}),
        "Service to a missing port": lambda o: find(o, "Service", "ttg-server")["spec"]["ports"][0].update(targetPort="nope"),
        "missing Secret": lambda o: o.remove(find(o, "Secret", "ttg-tokens")),
        "missing ConfigMap": lambda o: o.remove(find(o, "ConfigMap", "ttg-config")),
        "probe on an undeclared port": lambda o: server(o)["readinessProbe"]["grpc"].update(port=4444),
        "PDB contradicting replicas": lambda o: find(o, "PodDisruptionBudget", "ttg-server")["spec"].update(minAvailable=1, maxUnavailable=None) or find(o, "PodDisruptionBudget", "ttg-server")["spec"].pop("maxUnavailable"),
        "HPA beside KEDA": lambda o: o.append({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "h", "namespace": "ttg"},
                                              "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "ttg-agent"}, "minReplicas": 1, "maxReplicas": 3}}),
        "grace period shorter than the drain": lambda o: find(o, "Deployment", "ttg-agent")["spec"]["template"]["spec"].update(terminationGracePeriodSeconds=30),
        "root container": lambda o: server(o)["securityContext"].update(runAsUser=0),
        "writable root filesystem": lambda o: server(o)["securityContext"].update(readOnlyRootFilesystem=False),
        "no limits": lambda o: server(o)["resources"].pop("limits"),
    }
    failed = []
    for what, mutate in cases.items():
        objs = copy.deepcopy(good)
        mutate(objs)
        if not check(objs, set(), version, keda):
            failed.append(what)
    for f in failed:
        print(f"  self-test: a manifest with {f} passed", file=sys.stderr)
    print(f"self-test: {len(cases) - len(failed)}/{len(cases)} kinds of broken manifest rejected")
    return not failed


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k8s-version", default="1.32.0", help="Kubernetes version whose schemas to use (pinned)")
    args = ap.parse_args()
    keda = json.load(open(os.path.join(HERE, "schemas", "keda-scaledobject.json")))
    if not self_test(args.k8s_version, keda):
        sys.exit(1)
    total = 0
    failed = False
    for overlay, external in OVERLAYS.items():
        objs = render(overlay)
        problems = check(objs, external, args.k8s_version, keda)
        total += len(objs)
        status = "ok" if not problems else f"{len(problems)} problem(s)"
        print(f"{overlay}: {len(objs)} objects, {status}")
        for p in problems:
            print(f"  - {p}")
        failed |= bool(problems)
    for path, external in EXTRA_FILES.items():
        objs = [d for d in yaml.safe_load_all(open(os.path.join(HERE, path))) if d]
        problems = check(objs, external, args.k8s_version, keda)
        total += len(objs)
        print(f"{path}: {len(objs)} objects, {'ok' if not problems else f'{len(problems)} problem(s)'}")
        for p in problems:
            print(f"  - {p}")
        failed |= bool(problems)
    print(f"k8s: {total} objects checked against Kubernetes {args.k8s_version} (strict) and the KEDA schema")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
