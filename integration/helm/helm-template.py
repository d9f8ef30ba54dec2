"""A `helm template` for the tests, over Helm's own rendering library
(helm-python-sdk): no Helm binary can be installed on this machine.

    helm-template.py template NAME CHART [-f VALUES]... [-n NS] [--include-crds]

Prints what `helm template` prints: each document after `---` and a
`# Source: CHART/PATH` line, CRDs of the chart and its subcharts first
(with --include-crds), then the templates, hooks included. Errors go to
stderr as `Error: …` with exit status 1, as Helm's do. Values files merge
as Helm merges them (maps deeply, later files win).
"""

import argparse
import sys

import yaml


def merge(into, new):
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            merge(into[k], v)
        else:
            into[k] = v
    return into


def documents(text):
    """A template's output split into YAML documents, as Helm splits it."""
    docs, cur = [], []
    for line in text.splitlines():
        if line == "---" or line.startswith("--- "):
            docs.append("\n".join(cur))
            cur = []
        else:
            cur.append(line)
    docs.append("\n".join(cur))
    return [d for d in docs if d.strip() and any(
        l.strip() and not l.lstrip().startswith("#") for l in d.splitlines())]


def main():
    p = argparse.ArgumentParser(prog="helm")
    p.add_argument("command", choices=["template"])
    p.add_argument("name")
    p.add_argument("chart")
    p.add_argument("-f", "--values", action="append", default=[])
    p.add_argument("-n", "--namespace", default="default")
    p.add_argument("--include-crds", action="store_true")
    a = p.parse_args()

    import helm_python

    try:
        values = {}
        for f in a.values:
            with open(f) as fh:
                loaded = yaml.safe_load(fh) or {}
            if not isinstance(loaded, dict):
                raise helm_python.HelmError(f"values file {f} is not a map")
            merge(values, loaded)
        chart = helm_python.Chart.load(a.chart)
        declared = [d["name"] for d in chart.metadata.get("dependencies") or []]
        loaded = {d["name"] for d in chart.dependencies}
        missing = [d for d in declared if d not in loaded]
        if missing:
            raise helm_python.HelmError(
                "An error occurred while checking for chart dependencies. You may need to run "
                "`helm dependency build` to fetch missing dependencies: found in Chart.yaml, "
                "but missing in charts/ directory: " + ", ".join(missing))
        chart.validate_schema(values)
        out = chart.render(values, name=a.name, namespace=a.namespace, is_install=True)
        crds = chart.crds if a.include_crds else []
    except helm_python.HelmError as e:
        print(f"Error: {e}", file=sys.stderr)
        sys.exit(1)
    except (OSError, yaml.YAMLError) as e:
        print(f"Error: {e}", file=sys.stderr)
        sys.exit(1)
    w = sys.stdout.write
    for crd in crds:
        w(f"---\n# Source: {crd['filename']}\n{crd['data'].rstrip()}\n")
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in documents(text):
            w(f"---\n# Source: {path}\n{doc.strip(chr(10))}\n")


if __name__ == "__main__":
    main()
