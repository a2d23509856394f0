"""The SAM-transformed template.yaml, as CloudFormation receives it (aws-sam-translator),
and a small evaluator of the intrinsics the roles use, for the test rig."""

import copy
import json
import os
import re
from pathlib import Path

from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")  # the translator needs one; nothing is called

# Required parameters without defaults (any valid value; the roles do not depend on them).
REQUIRED = {"WorkerImage": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/copy-worker:1", "SubnetIds": "subnet-1", "SecurityGroupIds": "sg-1"}


class NoManagedPolicies:
    def load(self):
        return {}


def source_template():
    """template.yaml with the state machines' definitions inlined and a code location (what
    `sam package` would do)."""
    template = yaml_parse((ROOT / "template.yaml").read_text())
    for res in template["Resources"].values():
        props = res.get("Properties", {})
        if res["Type"] == "AWS::Serverless::StateMachine":
            props["Definition"] = json.loads((ROOT / props.pop("DefinitionUri")).read_text())
    template.get("Globals", {}).get("Function", {})["CodeUri"] = "s3://bucket/code.zip"
    return template


def transformed(params=None):
    """(source template, transformed template)."""
    template = source_template()
    return template, transform(copy.deepcopy(template), {**REQUIRED, **(params or {})}, NoManagedPolicies())


class Resolver:
    """Evaluates Ref, Fn::GetAtt, Fn::Sub, Fn::If, Fn::Join, Fn::Select, Fn::Split and the
    condition functions for given parameters, pseudo parameters and physical resources
    (`resources[logical_id]` = {"Ref": ..., "Arn": ..., other attributes}). A resource not
    given resolves to an ARN of its own that matches nothing real, so a call against it is
    refused."""

    NO_VALUE = object()

    def __init__(self, template, params, resources, region, account, partition="aws"):
        self.t = template
        self.params = {}
        for name, p in template.get("Parameters", {}).items():
            v = params.get(name, p.get("Default", REQUIRED.get(name)))
            if p.get("Type", "").startswith("List<") or p.get("Type") == "CommaDelimitedList":
                v = v if isinstance(v, list) else [s for s in str(v).split(",") if s]
            self.params[name] = v
        self.params.update({
            "AWS::Partition": partition, "AWS::Region": region, "AWS::AccountId": account,
            "AWS::URLSuffix": "amazonaws.com.cn" if partition == "aws-cn" else "amazonaws.com",
            "AWS::StackName": "transfer-hub", "AWS::NoValue": self.NO_VALUE,
        })
        self.resources = resources
        self.partition, self.region, self.account = partition, region, account

    def unbound(self, logical_id):
        return f"arn:{self.partition}:unbound:{self.region}:{self.account}:{logical_id}"

    def ref(self, name):
        if name in self.params:
            return self.params[name]
        return self.resources.get(name, {}).get("Ref", self.unbound(name))

    def getatt(self, logical_id, attr):
        return self.resources.get(logical_id, {}).get(attr, self.unbound(logical_id) + ("" if attr == "Arn" else "." + attr))

    def condition(self, name):
        return bool(self.value(self.t["Conditions"][name]))

    def sub(self, text, vars=None):
        vars = vars or {}

        def one(m):
            name = m.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            if name in vars:
                return str(vars[name])
            if "." in name and name.split(".")[0] not in self.params:
                lid, attr = name.split(".", 1)
                return str(self.getatt(lid, attr))
            v = self.ref(name)
            return ",".join(v) if isinstance(v, list) else str(v)

        return re.sub(r"\$\{([^}]+)\}", one, text)

    def value(self, v):
        if isinstance(v, list):
            out = [self.value(x) for x in v]
            return [x for x in out if x is not self.NO_VALUE]
        if not isinstance(v, dict):
            return v
        if len(v) == 1:
            (k, a), = v.items()
            if k == "Ref":
                return self.ref(a)
            if k == "Fn::GetAtt":
                lid, attr = a if isinstance(a, list) else a.split(".", 1)
                return self.getatt(lid, attr)
            if k == "Fn::Sub":
                if isinstance(a, list):
                    return self.sub(a[0], {n: self.value(x) for n, x in a[1].items()})
                return self.sub(a)
            if k == "Fn::If":
                return self.value(a[1] if self.condition(a[0]) else a[2])
            if k == "Fn::Join":
                return a[0].join(str(x) for x in self.value(a[1]))
            if k == "Fn::Select":
                return self.value(a[1])[int(self.value(a[0]))]
            if k == "Fn::Split":
                return str(self.value(a[1])).split(a[0])
            if k == "Fn::Equals":
                return self.value(a[0]) == self.value(a[1])
            if k == "Fn::Not":
                return not self.value(a[0])
            if k == "Fn::And":
                return all(self.value(x) for x in a)
            if k == "Fn::Or":
                return any(self.value(x) for x in a)
            if k == "Condition":
                return self.condition(a)
        out = {k: self.value(x) for k, x in v.items()}
        return {k: x for k, x in out.items() if x is not self.NO_VALUE}


def role_statements(params, resources, region, account, partition="aws"):
    """{role logical id: [statement, ...]}: every inline statement of every IAM role of the
    transformed template that this configuration deploys, resolved."""
    _, out = transformed({k: v for k, v in params.items() if isinstance(v, str)})
    r = Resolver(out, params, resources, region, account, partition)
    roles = {}
    for lid, res in out["Resources"].items():
        if res["Type"] != "AWS::IAM::Role":
            continue
        if "Condition" in res and not r.condition(res["Condition"]):
            continue
        statements = []
        for pol in r.value(res["Properties"].get("Policies", [])):
            st = pol["PolicyDocument"]["Statement"]
            statements += st if isinstance(st, list) else [st]
        roles[lid] = statements
    return roles
