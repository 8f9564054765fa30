"""What the operator writes, fitted to one machine (tessera.workers.local), without Ray."""

from __future__ import annotations

from tessera.api.serve import StageDeployment, WorkflowAppArgs
from tessera.workers.local import local_class_resources, localize_application

from .factories import app_args, stage


def test_localize_keeps_the_placement_and_shrinks_the_resources():
    llm = {"name": "answer", "kind": "llm", "model": "m", "inputTokens": 5, "outputTokens": 5, "dependsOn": ["prep"]}
    args = app_args(stage("prep"), llm)
    args.deployments.update({
        "prep": StageDeployment(hardware_class="l4", replicas=3, max_ongoing_requests=8, ray_actor_options={
            "num_cpus": 1, "num_gpus": 1, "memory": 2**30, "resources": {"tessera.dev/l4": 1}}),
        "answer": StageDeployment(hardware_class="h100", replicas=2, max_ongoing_requests=16, ray_actor_options={
            "num_cpus": 1, "num_gpus": 4, "resources": {"tessera.dev/h100": 4}}),
    })
    application = {"name": "wf", "route_prefix": "/wf", "import_path": "x:y", "args": args.to_wire()}
    local = WorkflowAppArgs.model_validate(localize_application(application)["args"])
    assert local.spec == args.spec
    prep, answer = local.deployments["prep"], local.deployments["answer"]
    assert prep.ray_actor_options == {"num_cpus": 0.1, "num_gpus": 0, "resources": {"tessera.dev/l4": 1}}
    assert (prep.replicas, prep.max_ongoing_requests, prep.hardware_class) == (1, 8, "l4")
    assert answer.ray_actor_options["resources"] == {"tessera.dev/h100": 4} and answer.ray_actor_options["num_gpus"] == 0
    assert answer.max_ongoing_requests == 1  # one llm call at a time per replica on a CPU
    assert application["args"]["deployments"]["prep"]["replicas"] == 3  # the operator's copy is left alone
    assert local_class_resources(["l4"]) == {"tessera.dev/l4": 1000}
