"""Prints the body of template.yaml's CloudWatch dashboard as CloudFormation would deploy it,
resolved, as JSON: {"objects": body with the objects half, "images_only": body without,
"stack": the stack name, "metrics_stack": the METRICS_STACK the functions get, "queues":
{logical id: queue name}, "functions": {logical id: function name}} (for the dashboard test)."""

import json

from sam_template import Resolver, source_template

QUEUES = {"JobQueue": "th-jobs", "JobDeadLetterQueue": "th-jobs-dlq"}


def main():
    template = source_template()
    functions = {lid: f"th-{lid}" for lid, r in template["Resources"].items() if r["Type"] == "AWS::Serverless::Function"}
    resources = {lid: {"Ref": name, "Arn": f"arn:aws:lambda:eu-west-1:123456789012:function:{name}"} for lid, name in functions.items()}
    for lid, name in QUEUES.items():
        resources[lid] = {"Ref": f"https://sqs.eu-west-1.amazonaws.com/123456789012/{name}", "QueueName": name}
    out = {"queues": QUEUES, "functions": functions}
    for key, params in [("objects", {"ObjectSourceBucket": "src", "ObjectDestBucket": "dst"}), ("images_only", {})]:
        r = Resolver(template, params, resources, "eu-west-1", "123456789012")
        out[key] = json.loads(r.value(template["Resources"]["Dashboard"]["Properties"]["DashboardBody"]))
        out["stack"] = r.ref("AWS::StackName")
        out["metrics_stack"] = r.value(template["Globals"]["Function"]["Environment"]["Variables"]["METRICS_STACK"])
    print(json.dumps(out))


if __name__ == "__main__":
    main()
