"""moto_server with IAM enforced as strictly as the tests need, and every decision logged.

Run like moto_server (`python3 tests/moto_iam.py -H 127.0.0.1 -p PORT`) with
`INITIAL_NO_AUTH_ACTION_COUNT=N` (the first N calls are free: the rig creates its admin user
with them) and `TRANSFER_HUB_IAM_LOG=FILE`: after the free calls every request is checked
against the caller's IAM policies and one JSON line per check is appended to FILE:
`{"principal": ARN, "action": "svc:Action", "resource": ARN, "allowed": bool}`.

What this adds to moto 5.2's own check (moto/iam/access_control.py), so that the rig is at
least as strict as AWS for the calls transfer-hub makes:
- Resources. moto passes the resource "*" for every service but S3, SQS, IAM and STS, so a
  statement naming an ARN never matches there. Here the request's resource ARN is derived
  for the services the functions call (DynamoDB table, Secrets Manager secret with its
  suffix, SSM parameter, ECR repository, ECS task definition, task and cluster (ListTasks is
  authorized on the cluster's container instances), SNS topic, KMS key, Step
  Functions state machine/execution, EventBridge Scheduler schedule); calls without resource-level permissions (e.g.
  ecr:GetAuthorizationToken, states:SendTask*) stay "*", as on AWS.
- Wildcards. Policy patterns are IAM globs: `*` any run, `?` one character, everything else
  literal (moto treats patterns as regular expressions: `.` matches anything and
  `name-??????` is an error).
- What AWS checks beside the named action: a copy (x-amz-copy-source) also needs
  s3:GetObject (s3:GetObjectVersion with a versionId) on the source object; a write that
  sets tags (x-amz-tagging) also needs s3:PutObjectTagging; HeadBucket is s3:ListBucket and
  SQS batch calls are authorized as their single-message action (there is no
  sqs:SendMessageBatch in IAM);
  a write with SSE-KMS (the key named on the request, or the upload's key for UploadPart
  and CompleteMultipartUpload) needs kms:GenerateDataKey and kms:Decrypt on that key, and a
  read or copy of an SSE-KMS object kms:Decrypt.
Not evaluated (moto ignores them, and so does this rig): policy conditions other than
StringEquals on trust policies, resource policies (bucket, key, queue and topic policies),
permission boundaries, and iam:PassRole at ecs:RunTask.
"""

import json
import os
import re
import sys
import threading
from urllib.parse import unquote, urlparse

from moto import settings
from moto.core.authorization import ActionAuthenticatorMixin
from moto.core.exceptions import AccessDeniedError, JsonRESTError
from moto.iam import access_control
from moto.iam.access_control import IAMRequestBase, IAMPolicyStatement, S3IAMRequest
from moto.utilities.utils import get_partition

LOG = os.environ.get("TRANSFER_HUB_IAM_LOG")
_lock = threading.Lock()


def _log(entry):
    if not LOG:
        return
    with _lock, open(LOG, "a") as f:
        f.write(json.dumps(entry) + "\n")


def _glob(pattern, value):
    rx = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.match(f"^{rx}$", value, flags=re.DOTALL)


IAMPolicyStatement._match = staticmethod(_glob)

# The caller is who its access key says (an unknown key is still refused). Signatures are not
# recomputed: moto rebuilds the canonical request from its decoded view of the URL and gets
# some wrong (ListObjectsV2 with prefix=in%2F fails); the SDK's signing is not under test.
IAMRequestBase.check_signature = lambda self: None

_check = IAMRequestBase.check_action_permitted


# API calls IAM authorizes as another action (moto names the API call).
IAM_ACTION = {
    "sqs:SendMessageBatch": "sqs:SendMessage",
    "sqs:DeleteMessageBatch": "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibilityBatch": "sqs:ChangeMessageVisibility",
}


def _checked(self, resource):
    self._action = IAM_ACTION.get(self._action, self._action)
    entry = {"principal": self._access_key.arn, "action": self._action, "resource": resource}
    try:
        _check(self, resource)
    except Exception:
        _log({**entry, "allowed": False})
        raise
    _log({**entry, "allowed": True})


IAMRequestBase.check_action_permitted = _checked


def _json_body(resp):
    body = getattr(resp, "body", None)
    if isinstance(body, dict):
        return body
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    try:
        v = json.loads(body or "{}")
        return v if isinstance(v, dict) else {}
    except (TypeError, ValueError):
        return {}


def _param(resp, name):
    v = resp.querystring.get(name)
    return v[0] if isinstance(v, list) else v


def _secret_arn(resp, secret_id):
    from moto.secretsmanager.models import secretsmanager_backends

    try:
        return secretsmanager_backends[resp.current_account][resp.region].describe_secret(secret_id).arn
    except Exception:
        return secret_id if secret_id.startswith("arn:") else "*"


def _task_definition_arn(resp, td):
    from moto.ecs.models import ecs_backends

    try:
        return ecs_backends[resp.current_account][resp.region].describe_task_definition(td).arn
    except Exception:
        return td if td.startswith("arn:") else "*"


def _kms_arn(resp, key_id, region=None, account=None):
    region, account = region or resp.region, account or resp.current_account
    if key_id.startswith("arn:"):
        return key_id
    from moto.kms.models import kms_backends

    try:
        return kms_backends[account][region].describe_key(key_id).arn
    except Exception:
        return f"arn:{get_partition(region)}:kms:{region}:{account}:key/{key_id}"


def _resource(resp, service, action):
    """The ARN AWS evaluates the call against ("*" where the API has no resource-level
    permissions or the rig does not know it)."""
    region, account = resp.region, resp.current_account
    part = get_partition(region)
    body = _json_body(resp)
    if service == "dynamodb" and body.get("TableName"):
        table = f"arn:{part}:dynamodb:{region}:{account}:table/{body['TableName']}"
        # A Query or Scan of an index is authorized on the index's ARN.
        return f"{table}/index/{body['IndexName']}" if body.get("IndexName") else table
    if service == "dynamodb" and isinstance(body.get("RequestItems"), dict):
        # BatchWriteItem / BatchGetItem: authorized per table (the rig's calls name one).
        tables = list(body["RequestItems"])
        if len(tables) == 1:
            return f"arn:{part}:dynamodb:{region}:{account}:table/{tables[0]}"
    if service == "secretsmanager" and body.get("SecretId"):
        return _secret_arn(resp, body["SecretId"])
    if service == "ssm" and body.get("Name"):
        name = body["Name"]
        if name.startswith("arn:"):
            return name
        return f"arn:{part}:ssm:{region}:{account}:parameter{name if name.startswith('/') else '/' + name}"
    if service == "ecr" and action != "GetAuthorizationToken":
        registry = body.get("registryId") or account
        names = body.get("repositoryNames") or []
        name = body.get("repositoryName") or (names[0] if len(names) == 1 else None)
        return f"arn:{part}:ecr:{region}:{registry}:repository/{name or '*'}"
    if service == "ecs" and action == "RunTask" and body.get("taskDefinition"):
        return _task_definition_arn(resp, body["taskDefinition"])
    if service == "ecs" and action in ("ListTasks", "StopTask"):
        cluster = (body.get("cluster") or "default").split("/")[-1]
        if action == "ListTasks":
            return f"arn:{part}:ecs:{region}:{account}:container-instance/{cluster}/*"
        task = str(body.get("task", "")).split("/")[-1]
        return f"arn:{part}:ecs:{region}:{account}:task/{cluster}/{task}"
    if service == "sns" and _param(resp, "TopicArn"):
        return _param(resp, "TopicArn")
    if service == "kms" and body.get("KeyId"):
        return _kms_arn(resp, body["KeyId"])
    if service == "states":
        for k in ("executionArn", "stateMachineArn"):
            if body.get(k):
                return body[k]
    if service == "scheduler":
        # REST: /schedules/{Name}, the group in the body (create, update) or the query.
        parsed = urlparse(resp.uri)
        m = re.match(r"^/schedules/([^/]+)$", parsed.path)
        if m:
            from urllib.parse import parse_qs

            group = body.get("GroupName") or (parse_qs(parsed.query).get("groupName") or ["default"])[0]
            return f"arn:{part}:scheduler:{region}:{account}:schedule/{group}/{unquote(m.group(1))}"
    return "*"


_authorize = ActionAuthenticatorMixin._authenticate_and_authorize_action


def _request(resp, cls, action):
    parsed = urlparse(resp.uri)
    path = parsed.path + ("?" + parsed.query if parsed.query else "")
    return cls(
        account_id=resp.current_account,
        method=resp.method,
        path=path,
        data=resp.data,
        body=resp.raw_body,
        headers=resp.headers,
        action=action,
    )


def _s3_object_kms_key(resp, bucket, key, version=None):
    from moto.s3.models import s3_backends

    try:
        obj = s3_backends[resp.current_account][get_partition(resp.region)].get_object(bucket, key, version_id=version)
        if obj is not None and obj.encryption == "aws:kms":
            return obj.kms_key_id
    except Exception:
        pass
    return None


def _s3_upload_kms_key(resp, bucket, upload_id):
    from moto.s3.models import s3_backends

    try:
        b = s3_backends[resp.current_account][get_partition(resp.region)].get_bucket(bucket)
        mp = b.multiparts.get(upload_id)
        if mp is not None and (mp.sse_encryption == "aws:kms" or mp.kms_key_id):
            return mp.kms_key_id
    except Exception:
        pass
    return None


def _s3_extra_checks(resp, resource):
    """What AWS checks beside the action moto names for an S3 request."""
    h = {k.lower(): v for k, v in resp.headers.items()}
    region, part = resp.region, get_partition(resp.region)
    bucket_key = resource.split(":::", 1)[-1]
    bucket, _, key = bucket_key.partition("/")
    query = resp.querystring
    extra = []  # (action, resource)
    src = h.get("x-amz-copy-source")
    if src:
        src = unquote(src).lstrip("/")
        src_path, _, q = src.partition("?")
        version = q[len("versionId="):] if q.startswith("versionId=") else None
        extra.append(("GetObjectVersion" if version else "GetObject", f"arn:{part}:s3:::{src_path}"))
        sb, _, sk = src_path.partition("/")
        src_key_id = _s3_object_kms_key(resp, sb, sk, version)
        if src_key_id:
            extra.append(("kms:Decrypt", _kms_arn(resp, src_key_id)))
        if h.get("x-amz-tagging-directive", "COPY").upper() == "COPY" and "partNumber" not in query:
            extra.append(("GetObjectTagging", f"arn:{part}:s3:::{src_path}"))
    if "x-amz-tagging" in h and resp.method in ("PUT", "POST"):
        extra.append(("PutObjectTagging", resource))
    if key and resp.method in ("PUT", "POST") and "tagging" not in query:
        kms_key = None
        if h.get("x-amz-server-side-encryption") == "aws:kms":
            kms_key = h.get("x-amz-server-side-encryption-aws-kms-key-id") or "alias/aws/s3"
        elif "uploadId" in query:
            upload = query["uploadId"][0] if isinstance(query["uploadId"], list) else query["uploadId"]
            kms_key = _s3_upload_kms_key(resp, bucket, upload)
        if kms_key:
            arn = _kms_arn(resp, kms_key)
            extra += [("kms:GenerateDataKey", arn), ("kms:Decrypt", arn)]
    if key and resp.method in ("GET", "HEAD") and not any(q in query for q in ("uploadId", "tagging", "acl")):
        kms_key = _s3_object_kms_key(resp, bucket, key)
        if kms_key:
            extra.append(("kms:Decrypt", _kms_arn(resp, kms_key)))
    for action, res in extra:
        if action.startswith("kms:"):
            req = _request(resp, access_control.IAMRequest, action.split(":", 1)[1])
            req._action = action  # signed for s3, evaluated as the KMS call S3 makes for the caller
        else:
            req = _request(resp, S3IAMRequest, action)
        req.check_action_permitted(res)


def _authorize_more(self, iam_request_cls, resource="*"):
    enforced = ActionAuthenticatorMixin.request_count >= settings.INITIAL_NO_AUTH_ACTION_COUNT
    if enforced and iam_request_cls is S3IAMRequest:
        if self.data.get("Action") == "HeadBucket":
            self.data["Action"] = "ListBucket"
        _authorize(self, iam_request_cls, resource)
        _s3_extra_checks(self, resource)
        return
    if enforced and resource == "*":
        try:
            auth = self.headers.get("Authorization", "")
            service = auth.partition("Credential=")[2].partition(",")[0].split("/")[3]
        except Exception:
            service = ""
        resource = _resource(self, service, self._get_action())
    try:
        _authorize(self, iam_request_cls, resource)
    except AccessDeniedError as e:
        if not self.headers.get("X-Amz-Target"):
            raise
        # The JSON protocols (DynamoDB, Secrets Manager, SSM, ECR, ECS, Step Functions, SQS,
        # KMS) answer 400 AccessDeniedException in JSON, which the SDKs parse; moto's XML is
        # an unparsable body to them.
        err = JsonRESTError("AccessDeniedException", e.message)
        err.code = 400
        raise err


ActionAuthenticatorMixin._authenticate_and_authorize_action = _authorize_more

if __name__ == "__main__":
    from moto.server import main

    main(sys.argv[1:])
