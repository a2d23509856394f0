"""IAM users in moto for the IAM-enforced test rig (hub_tests::iam), with boto3.

  python3 tests/iam_rig.py admin ENDPOINT
      The first calls of a moto started with INITIAL_NO_AUTH_ACTION_COUNT=3 (free, signed with
      moto's dummy keys): user `rig-admin` with Allow * on *. Prints its keys as JSON.
  python3 tests/iam_rig.py user ENDPOINT < {"user": NAME, "role": ROLE, "deployment": {...}}
  python3 tests/iam_rig.py user ENDPOINT < {"user": NAME, "statements": [...]}
      Signed with the admin keys (env RIG_ADMIN_KEY_ID / RIG_ADMIN_SECRET): a user whose only
      policy is ROLE's statements from the SAM-transformed template.yaml resolved for the
      deployment (see role_policies.py), or the statements given. Prints
      {"access_key_id", "secret_access_key", "statements"}.

  python3 tests/iam_rig.py kms-key ENDPOINT REGION
      Signed with the admin keys: a customer-managed KMS key; prints its ARN.
  python3 tests/iam_rig.py network ENDPOINT REGION
      Signed with the admin keys: a VPC, a subnet and a security group for copy tasks.
  python3 tests/iam_rig.py cognito ENDPOINT REGION
      Signed with the admin keys: the console's user pool (users by email), its app client
      and another client, one user, and that user's ID tokens from both clients and an
      access token. Prints {"pool", "client", "other_client", "email", "id_token",
      "other_id_token", "access_token"}.

Keys travel on stdout and in the environment only, never on a command line."""

import json
import os
import sys

import boto3

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

cmd, endpoint = sys.argv[1], sys.argv[2]
kw = {"endpoint_url": endpoint, "region_name": "us-east-1"}
if cmd == "admin":
    iam = boto3.client("iam", aws_access_key_id="testing", aws_secret_access_key="testing", **kw)
    iam.create_user(UserName="rig-admin")
    doc = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
    iam.put_user_policy(UserName="rig-admin", PolicyName="admin", PolicyDocument=json.dumps(doc))
    key = iam.create_access_key(UserName="rig-admin")["AccessKey"]
    json.dump({"access_key_id": key["AccessKeyId"], "secret_access_key": key["SecretAccessKey"]}, sys.stdout)
elif cmd == "user":
    req = json.load(sys.stdin)
    if "role" in req:
        from sam_template import role_statements

        d = req["deployment"]
        roles = role_statements(d.get("parameters", {}), d.get("resources", {}), d["region"], d["account"])
        if req["role"] not in roles:
            sys.exit(f"{req['role']} is not a role of the transformed template for this deployment: {sorted(roles)}")
        statements = roles[req["role"]]
    else:
        statements = req["statements"]
    iam = boto3.client("iam", aws_access_key_id=os.environ["RIG_ADMIN_KEY_ID"], aws_secret_access_key=os.environ["RIG_ADMIN_SECRET"], **kw)
    iam.create_user(UserName=req["user"])
    doc = {"Version": "2012-10-17", "Statement": statements}
    iam.put_user_policy(UserName=req["user"], PolicyName=req.get("role", "grant"), PolicyDocument=json.dumps(doc))
    key = iam.create_access_key(UserName=req["user"])["AccessKey"]
    json.dump({"access_key_id": key["AccessKeyId"], "secret_access_key": key["SecretAccessKey"], "statements": statements}, sys.stdout)
elif cmd == "network":
    # A VPC (DNS host names on: moto names a task's network interface only then), one subnet
    # and one security group, made by the admin. Prints {"subnet", "security_group"}.
    region = sys.argv[3]
    ec2 = boto3.client("ec2", aws_access_key_id=os.environ["RIG_ADMIN_KEY_ID"], aws_secret_access_key=os.environ["RIG_ADMIN_SECRET"], endpoint_url=endpoint, region_name=region)
    vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
    ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.42.1.0/24")["Subnet"]["SubnetId"]
    sg = ec2.create_security_group(VpcId=vpc, GroupName="copy", Description="copy tasks")["GroupId"]
    json.dump({"subnet": subnet, "security_group": sg}, sys.stdout)
elif cmd == "kms-key":
    # A customer-managed KMS key, made by the admin. Prints {"arn"}.
    region = sys.argv[3]
    kms = boto3.client("kms", aws_access_key_id=os.environ["RIG_ADMIN_KEY_ID"], aws_secret_access_key=os.environ["RIG_ADMIN_SECRET"], endpoint_url=endpoint, region_name=region)
    json.dump({"arn": kms.create_key(Description="transfer-hub test key")["KeyMetadata"]["Arn"]}, sys.stdout)
elif cmd == "cognito":
    region = sys.argv[3]
    idp = boto3.client("cognito-idp", aws_access_key_id=os.environ["RIG_ADMIN_KEY_ID"], aws_secret_access_key=os.environ["RIG_ADMIN_SECRET"], endpoint_url=endpoint, region_name=region)
    pool = idp.create_user_pool(PoolName="transfer-hub-console", UsernameAttributes=["email"])["UserPool"]["Id"]
    clients = [
        idp.create_user_pool_client(UserPoolId=pool, ClientName=name, ExplicitAuthFlows=["ADMIN_NO_SRP_AUTH"])["UserPoolClient"]["ClientId"]
        for name in ["console", "other"]
    ]
    email, password = "ops@example.com", "Rig-pass-word-1!"
    idp.admin_create_user(UserPoolId=pool, Username=email, TemporaryPassword="Rig-temp-word-1!")
    idp.admin_set_user_password(UserPoolId=pool, Username=email, Password=password, Permanent=True)
    tokens = [
        idp.admin_initiate_auth(UserPoolId=pool, ClientId=c, AuthFlow="ADMIN_NO_SRP_AUTH", AuthParameters={"USERNAME": email, "PASSWORD": password})["AuthenticationResult"]
        for c in clients
    ]
    json.dump({"pool": pool, "client": clients[0], "other_client": clients[1], "email": email,
               "id_token": tokens[0]["IdToken"], "other_id_token": tokens[1]["IdToken"],
               "access_token": tokens[0]["AccessToken"]}, sys.stdout)
else:
    sys.exit(f"unknown command {cmd}")
