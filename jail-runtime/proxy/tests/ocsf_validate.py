"""Checks OCSF events (one JSON object per line on stdin) against the OCSF schema.

The schema is OCSF's own export of version `metadata.version` (schema.ocsf.io
`export/schema`), as shipped by the PyPI package `ocsf-json-schema`, which turns a class and
the event's profiles (`metadata.profiles`) into a JSON Schema (draft 2020-12): required
attributes, enumerations, types, patterns, and no attribute the class does not define. The
validator is the PyPI package `jsonschema`. tests/scripts/ocsf-tools.sh installs both.

Prints one JSON line per event (`{"line", "class_uid", "errors"}`) and exits 1 if any event is
invalid (or a line is not JSON), 0 otherwise.
"""
import json
import sys

import jsonschema
from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema

schemas = {}
validators = {}
bad = 0
for number, text in enumerate(sys.stdin, start=1):
    text = text.strip()
    if not text:
        continue
    try:
        event = json.loads(text)
        version = event["metadata"]["version"]
        profiles = sorted(event["metadata"].get("profiles", []))
        if version not in schemas:
            schemas[version] = OcsfJsonSchemaEmbedded(get_ocsf_schema(version=version))
        key = (version, event["class_uid"], tuple(profiles))
        if key not in validators:
            schema = schemas[version]
            name = schema.lookup_class_name_from_uid(event["class_uid"])
            class_schema = schema.get_class_schema(name, profiles=profiles)
            jsonschema.Draft202012Validator.check_schema(class_schema)
            validators[key] = jsonschema.Draft202012Validator(class_schema)
        errors = [
            f"{'/'.join(str(p) for p in e.absolute_path) or '(event)'}: {e.message}"
            for e in validators[key].iter_errors(event)
        ]
    except Exception as e:  # noqa: BLE001 - any failure is this line's verdict
        errors = [f"{type(e).__name__}: {e}"]
        event = {}
    if errors:
        bad += 1
    print(json.dumps({"line": number, "class_uid": event.get("class_uid"), "errors": errors}))
sys.exit(1 if bad else 0)
