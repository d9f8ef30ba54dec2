"""Helm's own engine (helm-python-sdk) for the chart tests: render, lint,
and validate rendered objects with kubernetes-validate.

    chart.py render CHART NAME NAMESPACE < values.json
        prints {"objects": [...]} (every rendered document, NOTES.txt
        under "notes"); exit 2 with the error on stderr when Helm refuses
        (a values.schema.json rejection, a template failure)
    chart.py lint CHART < values.json
        prints Helm's lint report
    chart.py validate KUBE_VERSION < objects.json
        prints {"problems": [...]}: each object checked (strictly: unknown
        fields too) against the schemas of that Kubernetes version
"""

import json
import sys

import yaml


def render(chart_dir, name, namespace, values):
    import helm_python

    try:
        chart = helm_python.Chart.load(chart_dir)
        chart.validate_schema(values)
        out = chart.render(values, name=name, namespace=namespace, is_install=True)
    except helm_python.HelmError as e:
        print(str(e), file=sys.stderr)
        sys.exit(2)
    objects, notes = [], ""
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("metadata", {})
                objects.append({"template": path, "object": doc})
    return {"objects": objects, "notes": notes}


def lint(chart_dir, values):
    import helm_python

    return helm_python.lint(chart_dir, values, strict=True, kube_version="v1.33.0")


def validate(version, objects):
    import kubernetes_validate

    problems = []
    for o in objects:
        try:
            kubernetes_validate.validate(o, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            meta = o.get("metadata", {})
            problems.append(f"{o.get('kind')}/{meta.get('name')}: {e.message} at {list(e.path)}")
        except kubernetes_validate.SchemaNotFoundError as e:
            problems.append(f"{o.get('kind')}/{o.get('metadata', {}).get('name')}: {e}")
    return {"problems": problems}


def main():
    cmd = sys.argv[1]
    data = json.load(sys.stdin)
    if cmd == "render":
        result = render(sys.argv[2], sys.argv[3], sys.argv[4], data)
    elif cmd == "lint":
        result = lint(sys.argv[2], data)
    elif cmd == "validate":
        result = validate(sys.argv[2], data)
    else:
        sys.exit(f"unknown command {cmd}")
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
