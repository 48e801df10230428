"""Validates Kubernetes manifests: core kinds against the Kubernetes OpenAPI schemas
(kubernetes-validate, strict: an unknown field is an error), KEDA kinds against the
openAPIV3Schema of KEDA's own CRD. Prints one line per problem; exits 1 if there is any.

usage: validate_k8s.py <kubernetes version> <keda CRD folder> <manifest>...
"""

import pathlib
import sys

import jsonschema
import kubernetes_validate
import yaml


def crd_schemas(folder):
    schemas = {}
    for path in pathlib.Path(folder).glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schemas[(f"{group}/{version['name']}", kind)] = version["schema"]["openAPIV3Schema"]
    return schemas


def main():
    k8s_version, crd_folder, manifests = sys.argv[1], sys.argv[2], sys.argv[3:]
    crds = crd_schemas(crd_folder)
    problems, checked = [], 0
    for manifest in manifests:
        for n, doc in enumerate(yaml.safe_load_all(pathlib.Path(manifest).read_text())):
            if doc is None or doc.get("kind") == "Kustomization":
                continue
            where = f"{manifest} #{n} {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            key = (doc.get("apiVersion"), doc.get("kind"))
            try:
                if key in crds:
                    jsonschema.validate(doc["spec"], crds[key]["properties"]["spec"])
                else:
                    kubernetes_validate.validate(doc, k8s_version, strict=True)
                checked += 1
            except kubernetes_validate.ValidationError as err:
                problems.append(f"{where}: {'.'.join(map(str, err.path))}: {err.message}")
            except jsonschema.ValidationError as err:
                problems.append(f"{where}: spec.{'.'.join(map(str, err.path))}: {err.message}")
            except Exception as err:  # an unknown kind or API version
                problems.append(f"{where}: {err}")
    for problem in problems:
        print(problem)
    print(f"{checked} objects valid, {len(problems)} problems")
    sys.exit(1 if problems else 0)


main()
