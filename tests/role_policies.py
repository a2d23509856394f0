"""Prints the IAM statements of every role in the SAM-transformed template.yaml, resolved for
one deployment, as JSON: {"DiffObjectsRole": [statement, ...], ...}.

Input on stdin (JSON): {"parameters": {name: value}, "resources": {logical id: {"Ref": ...,
"Arn": ..., attribute: ...}}, "region": "eu-west-1", "account": "123456789012"}. The test rig
(hub_tests::iam) gives the names and ARNs of what it made in moto; anything else resolves to
an ARN that matches nothing."""

import json
import sys

sys.path.insert(0, __import__("os").path.dirname(__file__))
from sam_template import role_statements  # noqa: E402

req = json.load(sys.stdin)
json.dump(role_statements(req.get("parameters", {}), req.get("resources", {}), req.get("region", "eu-west-1"), req.get("account", "123456789012")), sys.stdout, indent=1)
