#!/usr/bin/env python3
"""Each Herald service's arguments and environment, as a deployment file gives them.

    deploy_env.py compose docker-compose.yml infra/deploy/Dockerfile
    deploy_env.py k8s infra/deploy/k8s infra/deploy/Dockerfile

Prints one JSON object: {service: {"args": [...], "env": {NAME: value}}}. The image's own
environment (the Dockerfile's ENV) comes first and the file's settings over it, as a container
runtime does. Compose's ${VAR}, ${VAR:-default} and ${VAR:?message} are filled from this
process's environment (a required one that is unset is an error, as it is for compose). A
Kubernetes env var taken from a pod field (valueFrom.fieldRef metadata.name) reads
`<deployment>-0`.

The tests feed what this prints to `herald check` and to the services themselves, so the
deployment files cannot drift from the binary.
"""

import json
import os
import re
import shlex
import sys
from pathlib import Path

import yaml

INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def fail(message):
    print(f"deploy_env.py: {message}", file=sys.stderr)
    sys.exit(2)


def image_env(dockerfile):
    """ENV NAME=value ... lines of the Dockerfile's last stage."""
    env = {}
    for line in Path(dockerfile).read_text().splitlines():
        if line.startswith("FROM "):
            env = {}
        if line.startswith("ENV "):
            for word in shlex.split(line[4:]):
                name, _, value = word.partition("=")
                env[name] = value
    return env


def interpolate(value, service):
    def one(match):
        name = match.group(1) or match.group(4)
        op, arg = match.group(2), match.group(3)
        current = os.environ.get(name)
        if op in (":-", "-"):
            if current is None or (op == ":-" and current == ""):
                return arg
        if op in (":?", "?"):
            if current is None or (op == ":?" and current == ""):
                fail(f"{service}: {name} is required: {arg}")
        return current or ""

    return INTERPOLATION.sub(one, str(value))


def compose(path, dockerfile):
    doc = yaml.safe_load(Path(path).read_text())
    base = image_env(dockerfile)
    services = {}
    for name, service in doc["services"].items():
        build = service.get("build")
        if not isinstance(build, dict) or build.get("dockerfile") != "infra/deploy/Dockerfile":
            continue
        env = dict(base)
        environment = service.get("environment") or {}
        if isinstance(environment, list):
            environment = dict(item.split("=", 1) for item in environment)
        for key, value in environment.items():
            env[key] = interpolate("" if value is None else value, name)
        args = [interpolate(word, name) for word in service.get("command", ["ingress"])]
        services[name] = {"args": args, "env": env}
    return services


def k8s(folder, dockerfile):
    documents = []
    for manifest in sorted(Path(folder).glob("*.yaml")):
        documents.extend(doc for doc in yaml.safe_load_all(manifest.read_text()) if doc)
    config_maps = {
        doc["metadata"]["name"]: doc.get("data") or {}
        for doc in documents
        if doc.get("kind") == "ConfigMap"
    }
    base = image_env(dockerfile)
    services = {}
    for doc in documents:
        if doc.get("kind") not in ("Deployment", "StatefulSet"):
            continue
        name = doc["metadata"]["name"]
        for container in doc["spec"]["template"]["spec"]["containers"]:
            if not str(container.get("image", "")).startswith("herald:"):
                continue
            env = dict(base)
            for source in container.get("envFrom") or []:
                ref = source.get("configMapRef")
                if ref:
                    if ref["name"] not in config_maps:
                        fail(f"{name}: no ConfigMap {ref['name']}")
                    env.update({k: str(v) for k, v in config_maps[ref["name"]].items()})
            for item in container.get("env") or []:
                if "value" in item:
                    env[item["name"]] = str(item["value"])
                elif item.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name":
                    env[item["name"]] = f"{name}-0"
                else:
                    fail(f"{name}: {item['name']} comes from a source this script cannot read")
            args = list(container.get("command") or [])[1:] + list(container.get("args") or [])
            services[name] = {"args": args, "env": env}
    return services


def main():
    if len(sys.argv) != 4 or sys.argv[1] not in ("compose", "k8s"):
        fail(__doc__.strip().splitlines()[2].strip() + " | k8s <folder> <Dockerfile>")
    kind, path, dockerfile = sys.argv[1:]
    services = compose(path, dockerfile) if kind == "compose" else k8s(path, dockerfile)
    if not services:
        fail(f"no Herald service found in {path}")
    json.dump(services, sys.stdout, indent=1, sort_keys=True)
    print()


if __name__ == "__main__":
    main()
