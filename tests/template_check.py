"""Checks of template.yaml a reviewer would make, on the real SAM/CloudFormation tooling:
cfn-lint (0 errors, 0 warnings), the SAM transform (aws-sam-translator), and the rules of
this project on the transformed template: arm64 + provided.al2023 + JSON logs for every
function, partition-aware ARNs, `Resource: "*"` only for actions without resource-level
permissions, encryption on, no public IP by default, and the state machine's shape
(MaxConcurrency 10, 3 retries with full jitter on retryable errors only, Catch, heartbeat).
Exit 0 when every check holds; every failure is printed."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sam_template import ROOT, role_statements, source_template, transformed  # noqa: E402
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)


# 1. cfn-lint on the template as written.
cfn_lint = shutil.which("cfn-lint") or str(Path(sys.executable).parent / "cfn-lint")
lint = subprocess.run([cfn_lint, str(ROOT / "template.yaml")], capture_output=True, text=True)
check(lint.returncode == 0, f"cfn-lint reported problems:\n{lint.stdout}{lint.stderr}")

# 2. The SAM transform (local code paths stand in for the S3 locations `sam package` makes).
try:
    template, out = transformed()
except Exception as e:  # the translator's own errors say what is wrong
    failures.append(f"SAM transform failed: {e}")
    template, out = source_template(), {"Resources": {}}

res = out["Resources"]
functions = {k: v for k, v in res.items() if v["Type"] == "AWS::Lambda::Function"}
check(len(functions) == 8, f"expected 8 functions (4 images, 3 objects, the console), found {sorted(functions)}")
for name, fn in functions.items():
    p = fn["Properties"]
    role = p.get("Role", {})
    check(isinstance(role, dict) and "Fn::GetAtt" in role, f"{name}: must use its own role from this template (no SAM-generated role with AWSLambdaBasicExecutionRole)")
    check(p.get("Architectures") == ["arm64"], f"{name}: Architectures must be [arm64]")
    check(p.get("Runtime") == "provided.al2023", f"{name}: Runtime must be provided.al2023")
    check(p.get("LoggingConfig", {}).get("LogFormat") == "JSON", f"{name}: LoggingConfig.LogFormat must be JSON")
for name, r in template["Resources"].items():
    if r["Type"] == "AWS::Serverless::Function":
        check(r.get("Metadata", {}).get("BuildMethod") == "rust-cargolambda", f"{name}: Metadata.BuildMethod must be rust-cargolambda")

# Partition-aware ARNs: the template names no partition literally (the SAM transform fills
# in its own managed-policy ARNs for the region it deploys to).
source_text = "".join((ROOT / f).read_text() for f in ["template.yaml", "statemachine/images.asl.json", "statemachine/objects-diff.asl.json"])
check("arn:aws:" not in source_text and "arn:aws-cn:" not in source_text, "an ARN names a partition literally; use ${AWS::Partition}")

# Wildcard resources only where the API has no resource-level permissions.
WILDCARD_OK = {
    "ecr:GetAuthorizationToken",
    "states:SendTaskSuccess", "states:SendTaskFailure", "states:SendTaskHeartbeat",
    "logs:CreateLogDelivery", "logs:GetLogDelivery", "logs:UpdateLogDelivery", "logs:DeleteLogDelivery",
    "logs:ListLogDeliveries", "logs:PutResourcePolicy", "logs:DescribeResourcePolicies", "logs:DescribeLogGroups",
    "xray:PutTraceSegments", "xray:PutTelemetryRecords", "xray:GetSamplingRules", "xray:GetSamplingTargets",
}


def policies(role):
    """A role's inline policies; one kept by `Fn::If` counts in either branch."""
    out = []
    for pol in role["Properties"].get("Policies", []):
        if isinstance(pol, dict) and "Fn::If" in pol:
            out += [b for b in pol["Fn::If"][1:] if isinstance(b, dict) and "PolicyDocument" in b]
        else:
            out.append(pol)
    return out


def statements(doc):
    """The statements of a policy document; one kept by `Fn::If` counts in either branch."""
    s = doc.get("Statement", [])
    out = []
    for st in s if isinstance(s, list) else [s]:
        if isinstance(st, dict) and "Fn::If" in st:
            out += [b for b in st["Fn::If"][1:] if isinstance(b, dict) and "Effect" in b]
        else:
            out.append(st)
    return out


for name, r in res.items():
    if r["Type"] != "AWS::IAM::Role":
        continue
    for pol in policies(r):
        for st in statements(pol["PolicyDocument"]):
            resources = st.get("Resource")
            resources = resources if isinstance(resources, list) else [resources]
            if "*" in resources and st.get("Effect") == "Allow":
                actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
                bad = [a for a in actions if a not in WILDCARD_OK]
                check(not bad, f"{name}: Resource '*' for {bad}")
    # No managed policy at all: AWSLambdaBasicExecutionRole alone allows logs on every group.
    managed = r["Properties"].get("ManagedPolicyArns", [])
    check(not managed, f"{name}: managed policies {managed} are too wide")
    # A function's role writes its own log group only.
    if name.endswith("Role") and any(st.get("Sid") == "OwnLogGroup" for pol in policies(r) for st in statements(pol["PolicyDocument"])):
        for pol in policies(r):
            for st in statements(pol["PolicyDocument"]):
                acts = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
                if any(a.startswith("logs:") for a in acts):
                    check(st.get("Sid") == "OwnLogGroup", f"{name}: log actions outside the function's own log group")

# Resources name exactly what each role needs. A secret's ARN is its name plus a dash and six
# random characters: `name-*` would also match `name-other-AbCdEf`, so `name-??????`. An SSM
# parameter is named exactly. The state machine's own executions only.
def resource_texts(st):
    rs = st.get("Resource")
    rs = rs if isinstance(rs, list) else [rs]
    out = []

    def walk(v):
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, dict):
            for k, x in v.items():
                if k == "Fn::If":
                    walk(x[1])
                    walk(x[2])
                elif k == "Fn::Sub":
                    walk(x if isinstance(x, str) else x[0])
                elif k in ("Ref", "Fn::GetAtt"):
                    out.append(json.dumps({k: x}))
        elif isinstance(v, list):
            for x in v:
                walk(x)

    walk(rs)
    return out


for name, r in res.items():
    if r["Type"] != "AWS::IAM::Role":
        continue
    for pol in policies(r):
        for st in statements(pol["PolicyDocument"]):
            acts = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
            texts = resource_texts(st)
            if "secretsmanager:GetSecretValue" in acts:
                bad = [x for x in texts if not x.endswith("-??????")]
                check(not bad, f"{name}: a secret ARN must end in -?????? (its name, a dash, six characters): {bad}")
            if any(a.startswith("ssm:") for a in acts):
                bad = [x for x in texts if "*" in x]
                check(not bad, f"{name}: an SSM parameter ARN must name the parameter exactly: {bad}")
            if any(a.startswith("states:") and a not in WILDCARD_OK for a in acts):
                bad = [x for x in texts if ":stateMachine:*" in x or ":execution:*" in x]
                check(not bad, f"{name}: states actions on every state machine/execution: {bad}")

# Deletion at the destination is granted only to a deployment that deletes (S3 events on,
# ObjectDeleteOnEvents=true); S3 may send the source bucket's notifications to the job queue,
# and only from that bucket in its owner's account.
def transfer_actions(**params):
    base = {"ObjectSourceBucket": "src", "ObjectDestBucket": "dst", **params}
    sts = role_statements(base, {}, "eu-west-1", "123456789012")["TransferObjectRole"]
    return {a for st in sts for a in ([st["Action"]] if isinstance(st["Action"], str) else st["Action"])}


check("s3:DeleteObject" not in transfer_actions(ObjectEvents="true", ObjectDeleteOnEvents="false"), "TransferObjectRole may delete at the destination although ObjectDeleteOnEvents is off")
check("s3:DeleteObject" not in transfer_actions(ObjectEvents="false", ObjectDeleteOnEvents="true"), "TransferObjectRole may delete at the destination although no S3 events reach it")
check("s3:DeleteObject" in transfer_actions(ObjectEvents="true", ObjectDeleteOnEvents="true"), "TransferObjectRole cannot apply ObjectRemoved events although ObjectDeleteOnEvents is on")
for st in statements(res.get("JobQueuePolicy", {}).get("Properties", {}).get("PolicyDocument", {})):
    keys = {k for cond in st.get("Condition", {}).values() for k in cond}
    check({"aws:SourceArn", "aws:SourceAccount"} <= keys, f"JobQueuePolicy {st.get('Sid')}: S3 notifications must be limited by aws:SourceArn and aws:SourceAccount, has {sorted(keys)}")
check("JobQueuePolicy" in res, "no JobQueuePolicy in the transformed template")

# CloudWatch alarms cannot publish to a topic encrypted with the AWS-managed SNS key (its key
# policy cannot be changed): the alarm topic's key is one of this template whose key policy
# lets CloudWatch use it, and record-status may use that key only.
for tname, topic in res.items():
    if topic["Type"] != "AWS::SNS::Topic":
        continue
    key_ref = topic["Properties"].get("KmsMasterKeyId")
    key = res.get(key_ref.get("Ref"), {}) if isinstance(key_ref, dict) else {}
    check(key.get("Type") == "AWS::KMS::Key", f"{tname}: encrypted with {key_ref!r}, not a key of this template that CloudWatch may use")
    kp = key.get("Properties", {})
    cw = [st for st in statements(kp.get("KeyPolicy", {})) if st.get("Principal", {}).get("Service") == "cloudwatch.amazonaws.com"]
    cw_actions = {a for st in cw for a in ([st["Action"]] if isinstance(st["Action"], str) else st["Action"])}
    check({"kms:Decrypt", "kms:GenerateDataKey*"} <= cw_actions, f"{tname}: its key policy must let cloudwatch.amazonaws.com kms:Decrypt and kms:GenerateDataKey*, has {sorted(cw_actions)}")
    check(kp.get("EnableKeyRotation") is True, f"{tname}: its key must rotate")
kms_resources = [st.get("Resource") for pol in policies(res.get("RecordStatusRole", {"Properties": {}})) for st in statements(pol["PolicyDocument"]) if any(str(a).startswith("kms:") for a in ([st["Action"]] if isinstance(st["Action"], str) else st["Action"]))]
check(kms_resources == [{"Fn::GetAtt": ["AlarmTopicKey", "Arn"]}], f"RecordStatusRole: KMS only on the alarm topic's key, has {kms_resources}")

# Encryption and exposure.
tables = [v for v in res.values() if v["Type"] == "AWS::DynamoDB::Table"]
check(tables and all(t["Properties"].get("SSESpecification", {}).get("SSEEnabled") for t in tables), "DynamoDB table without SSE")
check(tables and all(t["Properties"].get("PointInTimeRecoverySpecification", {}).get("PointInTimeRecoveryEnabled") for t in tables), "DynamoDB table without point-in-time recovery")
check(all(v["Properties"].get("BillingMode") == "PAY_PER_REQUEST" for v in tables), "DynamoDB table not on-demand")
topics = [v for v in res.values() if v["Type"] == "AWS::SNS::Topic"]
check(topics and all(t["Properties"].get("KmsMasterKeyId") for t in topics), "SNS topic without encryption")
for v in res.values():
    if v["Type"] == "AWS::S3::Bucket":
        check("BucketEncryption" in v["Properties"], "S3 bucket without encryption")
        check(all(v["Properties"].get("PublicAccessBlockConfiguration", {}).values()), "S3 bucket without a full public access block")
    if v["Type"] == "AWS::Logs::LogGroup":
        check(v["Properties"].get("RetentionInDays"), "log group without retention")
check(template["Parameters"]["AssignPublicIp"]["Default"] == "DISABLED", "copy tasks get a public IP by default")
tds = [v for v in res.values() if v["Type"] == "AWS::ECS::TaskDefinition"]
check(tds and tds[0]["Properties"]["RuntimePlatform"]["CpuArchitecture"] == "ARM64", "copy task is not arm64")
check(tds and tds[0]["Properties"]["ContainerDefinitions"][0]["LogConfiguration"]["LogDriver"] == "awslogs", "copy task does not log to CloudWatch")

# The state machine's shape.
asl = json.loads((ROOT / "statemachine/images.asl.json").read_text())
maps = [s for s in asl["States"].values() if s["Type"] == "Map"]
check(len(maps) == 2, "expected an inline and a distributed Map")
for m in maps:
    check(m.get("MaxConcurrency") == 10, "Map MaxConcurrency must be 10")
    copy_state = m["ItemProcessor"]["States"]["CopyImage"]
    check(copy_state["Resource"].endswith("lambda:invoke.waitForTaskToken"), "CopyImage must wait for the task token")
    check(copy_state.get("HeartbeatSeconds") and copy_state.get("TimeoutSeconds"), "CopyImage needs TimeoutSeconds and HeartbeatSeconds")
    retry = copy_state["Retry"][0]
    check(retry["MaxAttempts"] == 3 and retry.get("JitterStrategy") == "FULL", "CopyImage: 3 retries with full jitter")
    check("States.ALL" not in retry["ErrorEquals"] and "AuthDenied" not in retry["ErrorEquals"], "CopyImage retries non-retryable errors")
    check(copy_state["Catch"][-1] == {"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "RecordImageFailure"}, "a failed image must be recorded, then the others go on")
    # A copy that timed out may still run: its ECS task is stopped before another starts.
    timeouts = {"States.HeartbeatTimeout", "States.Timeout"}
    check(not timeouts & set(retry["ErrorEquals"]), "CopyImage retries a timeout without stopping its task first")
    states = m["ItemProcessor"]["States"]
    on_timeout = [c for c in copy_state["Catch"] if timeouts <= set(c["ErrorEquals"])]
    stop = states.get(on_timeout[0]["Next"], {}) if on_timeout else {}
    check(stop.get("Parameters", {}).get("FunctionName") == "${DispatchFargateFunctionArn}" and stop.get("Parameters", {}).get("Payload", {}).get("action") == "stop", "a timed-out copy must go to a state that stops its task (dispatch-fargate, action stop)")
    seen, nxt = [], stop.get("Next")
    while nxt and nxt not in seen and nxt != "CopyImage":
        seen.append(nxt)
        s = states.get(nxt, {})
        nxt = s.get("Next") or next((c["Next"] for c in s.get("Choices", []) if c["Next"] != "RecordImageFailure"), None)
    check(nxt == "CopyImage", f"after stopping a timed-out task the copy must be tried again (path {seen})")
    check(m.get("ItemSelector", {}).get("timeouts") == 0, "each image starts with no timeouts counted")
    check("${" in copy_state["Parameters"]["FunctionName"], "function ARNs come from DefinitionSubstitutions")

# The object diff loop: rounds until `next` is absent, each retried only on retryable errors.
asl = json.loads((ROOT / "statemachine/objects-diff.asl.json").read_text())
round_state = asl["States"][asl["StartAt"]]
check("${DiffObjectsFunctionArn}" == round_state["Parameters"]["FunctionName"], "the diff round must invoke diff-objects")
check(round_state["Parameters"].get("Payload.$") == "$" and round_state.get("OutputPath") == "$.Payload", "a round's output must be the next round's input")
check(round_state.get("TimeoutSeconds", 0) > 900, "the round's timeout must exceed the function's 900 s")
retry = round_state["Retry"][0]
check("States.ALL" not in retry["ErrorEquals"] and retry.get("JitterStrategy") == "FULL", "diff rounds retry only retryable errors, with full jitter")
loop = asl["States"][round_state["Next"]]
check(loop["Type"] == "Choice" and loop["Choices"][0] == {"Variable": "$.next", "IsPresent": True, "Next": asl["StartAt"]}, "the diff must loop while `next` is present")
machines = {k: v for k, v in template["Resources"].items() if v["Type"] == "AWS::Serverless::StateMachine"}
check(machines.get("ObjectsDiffStateMachine", {}).get("Properties", {}).get("Events", {}).get("Hourly", {}).get("Type") == "Schedule", "the object diff state machine runs on the schedule")
check(not template["Resources"]["DiffObjectsFunction"]["Properties"].get("Events"), "diff-objects is started by its state machine, not by a schedule of its own")

for f in failures:
    print("FAIL:", f)
print(f"template checks: {'ok' if not failures else str(len(failures)) + ' failed'}")
sys.exit(1 if failures else 0)
