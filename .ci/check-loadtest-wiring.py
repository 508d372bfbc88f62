#!/usr/bin/env python3
"""The load-test Job's assumptions hold in the rendered fleet: every --relay NODE=HOST:PORT
names a pod of the StatefulSet that exists (duet-relay-N with N < replicas) under its
headless Service, on the QUIC port; relays take --node-id from the pod name; both sides use
one token key id (the Job signs with Secret duet-token-signing-key, the relays verify with ConfigMap
duet-token-public-keys); every flag the Job passes is one duet-loadtest has.

usage: check-loadtest-wiring.py FLEET.yaml LOADTEST.yaml LOADTEST_HELP.txt
"""
import re
import sys

import yaml


def objects(path):
    return {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(open(path)) if d}


def fail(msg):
    print(f"FAIL {msg}")
    sys.exit(1)


def main():
    fleet, lt, help_text = objects(sys.argv[1]), objects(sys.argv[2]), open(sys.argv[3]).read()
    sts = fleet.get(("StatefulSet", "duet-relay")) or fail("no StatefulSet duet-relay")
    svc_name = sts["spec"]["serviceName"]
    svc = fleet.get(("Service", svc_name)) or fail(f"no Service {svc_name}")
    if svc["spec"].get("clusterIP") != "None" or svc["spec"].get("publishNotReadyAddresses"):
        fail(f"Service {svc_name} must be headless and publish only ready pods")
    pod = sts["spec"]["template"]["spec"]
    relay = pod["containers"][0]
    quic = next(p["containerPort"] for p in relay["ports"] if p["name"] == "quic")
    if "--node-id=$(POD_NAME)" not in relay["args"]:
        fail("relay args lack --node-id=$(POD_NAME)")
    env = {e["name"]: e for e in relay["env"]}
    if env.get("POD_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "metadata.name":
        fail("POD_NAME must come from metadata.name")
    relay_secrets = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    config = next(d for (k, _), d in fleet.items()
                  if k == "ConfigMap" and "relay.toml" in d.get("data", {}))["data"]["relay.toml"]

    job = lt.get(("Job", "duet-loadtest")) or fail("no Job duet-loadtest")
    jpod = job["spec"]["template"]["spec"]
    args = " ".join(jpod["containers"][0]["args"])
    relays = re.findall(r"--relay=(\S+)=(\S+):(\d+)", args)
    if not relays:
        fail("the Job names no --relay NODE=HOST:PORT")
    for node, host, port in relays:
        m = re.fullmatch(r"duet-relay-(\d+)", node)
        if not m or int(m.group(1)) >= sts["spec"]["replicas"]:
            fail(f"--relay {node}: not a pod of StatefulSet duet-relay ({sts['spec']['replicas']} replicas)")
        if host != f"{node}.{svc_name}" or int(port) != quic:
            fail(f"--relay {node}={host}:{port}: expected {node}.{svc_name}:{quic}")
    key_id = re.search(r"--token-key-id=(\S+)", args).group(1)
    if f'id = "{key_id}"' not in config:
        fail(f"relays do not trust token key id {key_id}")
    job_secrets = {v["secret"]["secretName"] for v in jpod["volumes"] if "secret" in v}
    if "duet-token-signing-key" not in job_secrets:
        fail("the Job must mount Secret duet-token-signing-key to mint tokens")
    if "duet-token-signing-key" in relay_secrets:
        fail("relays must not mount the signing key: they hold public keys only")
    relay_maps = {v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v}
    if "duet-token-public-keys" not in relay_maps:
        fail("relays must mount ConfigMap duet-token-public-keys")
    for flag in sorted(set(re.findall(r"(--[a-z][a-z0-9-]*)", args))):
        if not re.search(rf"{re.escape(flag)}\b", help_text):
            fail(f"duet-loadtest has no flag {flag}")
    print(f"ok   {len(relays)} relays {', '.join(n for n, _, _ in relays)} via {svc_name}:{quic}, "
          f"token key {key_id}, secrets {sorted(job_secrets)}, every flag known to duet-loadtest")


if __name__ == "__main__":
    main()
