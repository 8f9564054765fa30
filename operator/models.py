"""Pure builders of the model deployments a plan needs, and of the Ray Serve LLM application (vLLM).

One model deployment per (ModelProfile, hardware class) that the plan uses: every llm stage the plan
puts on that class with that model calls the same deployment. On an accelerator class whose profile
names weights vLLM can load, the deployment is a ``ray.serve.llm`` LLMConfig in a second Serve
application next to the workflow's; on a CPU class, for the embedded default model, and where a
stage's draft runs on another class than its target (Dovetail), it is Tessera's own engine inside the
workflow's application. docs/serving.md says when which engine runs, and how requests carry their
priority and structured outputs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from tessera.api import AgentWorkflow, HardwareClass, Plan, Stage
from tessera.api.model_profile import CPUEngineOptions, ModelProfile
from tessera.api.serve import ModelDeployment, llm_route_prefix, ray_resource
from tessera.api.workflow import DraftMethod, SpeculativeDecoding

GPU_RESOURCES = ("nvidia.com/gpu", "amd.com/gpu")  # the device plugins whose devices Ray counts as GPUs
LLM_IMPORT_PATH = "ray.serve.llm:build_openai_app"
# The workflow runtime's global dispatch policy, given to Ray Serve LLM as the deployment's router.
POLICY_ROUTER_CLASS = "tessera.workers.runtime.routing:PolicyRequestRouter"
NGRAM_LOOKUP_MAX = 4  # longest n-gram prompt lookup matches (vLLM's prompt_lookup_max)
NGRAM_LOOKUP_MIN = 2
# Speculative methods vLLM has no counterpart of: the model deployment uses prompt lookup instead.
NGRAM_FALLBACK = (DraftMethod.ngram, DraftMethod.layer_skip, DraftMethod.quantized)


def model_deployment_key(model: str, hardware_class: str) -> str:
    """The key of a model deployment in ``WorkflowAppArgs.models`` (and vLLM's model id)."""
    return f"{model}@{hardware_class}"


def llm_application_name(workflow: str) -> str:
    return f"{workflow}-llm"


def device_actor_options(hardware: HardwareClass, tensor_parallel: int) -> dict[str, Any]:
    """One replica on ``tensor_parallel`` devices of a class: its devices as GPUs (where Ray counts them) and as the class's resource."""
    gpus = tensor_parallel if hardware.spec.resource_name in GPU_RESOURCES else 0
    return {"num_cpus": 1, "num_gpus": gpus, "resources": {ray_resource(hardware.metadata.name): tensor_parallel}}


def chooses_vllm(stages: list[tuple[Stage, str | None]], hardware: HardwareClass, profile: ModelProfile | None) -> bool:
    """vLLM serves a model on a class Ray Serve LLM can place, whose weights it can load, unless a stage drafts
    elsewhere. Ray Serve LLM places engine workers on GPUs (and TPUs) only: Ray counts NVIDIA and AMD devices
    as GPUs, Gaudi's not, so Gaudi classes run Tessera's engine (docs/serving.md)."""
    if hardware.spec.resource_name not in GPU_RESOURCES or profile is None or profile.spec.source is None:
        return False
    if profile.spec.source.kind == "package":  # a wheel's GGUF: Tessera's engine loads it
        return False
    placed_class = hardware.metadata.name
    return not any(draft and draft != placed_class for _, draft in stages)  # Dovetail stays with Tessera


def build_model_deployments(workflow: AgentWorkflow, plan: Plan, classes: Mapping[str, HardwareClass],
                            profiles: Mapping[str, ModelProfile]) -> tuple[dict[str, ModelDeployment], dict[str, str]]:
    """The model deployments the plan uses, and the key each planned llm stage calls.

    The stages that share a deployment share its devices: it holds as many devices as their replicas
    did (replicas x tensor-parallel degree, summed), at the largest degree among them.
    """
    groups: dict[str, list[tuple[Stage, Any]]] = {}
    keys: dict[str, str] = {}
    for stage in workflow.spec.stages:
        planned = plan.stages.get(stage.name)
        if stage.kind.value != "llm" or stage.model is None or planned is None:
            continue
        key = model_deployment_key(stage.model, planned.hardware_class)
        groups.setdefault(key, []).append((stage, planned))
        keys[stage.name] = key
    deployments: dict[str, ModelDeployment] = {}
    for key, members in groups.items():
        model, class_name = members[0][0].model, members[0][1].hardware_class
        hardware, profile = classes[class_name], profiles.get(model)
        tensor_parallel = max(planned.tensor_parallel for _, planned in members)
        devices = sum(planned.replicas * planned.tensor_parallel for _, planned in members)
        vllm = chooses_vllm([(stage, planned.draft_hardware_class) for stage, planned in members], hardware, profile)
        source = profile.spec.source if profile is not None else None
        deployments[key] = ModelDeployment(
            model=model,
            hardware_class=class_name,
            replicas=math.ceil(devices / tensor_parallel),
            tensor_parallel=tensor_parallel,
            ray_actor_options=device_actor_options(hardware, tensor_parallel),
            engine="vllm" if vllm else "cpu",
            source=source.location if source is not None else None,
            max_batch_size=(max(planned.batch_size for _, planned in members) if vllm
                            else (profile.spec.engine_options.cpu if profile else CPUEngineOptions()).max_batch_size),
        )
    return deployments, keys


def speculative_config(spec: SpeculativeDecoding | None, profile: ModelProfile | None,
                       profiles: Mapping[str, ModelProfile]) -> dict[str, Any] | None:
    """A stage's planned speculative decoding as vLLM's ``speculative_config`` (None: decode plainly).

    draftHead is EAGLE where the profile names an EAGLE head; without one, and for the methods vLLM
    lacks (layerSkip, quantized), vLLM drafts by prompt lookup (ngram), which needs no weights.
    A draftModel whose profile names no weights cannot be drafted by vLLM: the stage decodes plainly.
    """
    if spec is None or not spec.enabled:
        return None
    tokens = spec.draft_length
    if spec.method is DraftMethod.draft_model:
        draft = profiles.get(spec.draft_model or "")
        if draft is None or draft.spec.source is None:
            return None
        return {"model": draft.spec.source.location, "num_speculative_tokens": tokens}
    if spec.method is DraftMethod.draft_head and profile is not None and profile.spec.eagle_head is not None:
        return {"method": "eagle", "model": profile.spec.eagle_head.location, "num_speculative_tokens": tokens}
    return {"method": "ngram", "num_speculative_tokens": tokens,
            "prompt_lookup_max": NGRAM_LOOKUP_MAX, "prompt_lookup_min": NGRAM_LOOKUP_MIN}


def build_llm_config(key: str, deployment: ModelDeployment, hardware: HardwareClass, profile: ModelProfile,
                     speculative: dict[str, Any] | None, policy: str) -> dict[str, Any]:
    """One ``ray.serve.llm.LLMConfig`` (as a dict): vLLM serving one model on one class, as planned."""
    engine_kwargs: dict[str, Any] = {
        **profile.spec.engine_options.vllm.engine_kwargs(),
        "tensor_parallel_size": deployment.tensor_parallel,
        "scheduling_policy": "priority",  # each request's priority orders admission (docs/serving.md)
    }
    if speculative is not None:
        engine_kwargs["speculative_config"] = speculative
    if profile.spec.source is not None and profile.spec.source.revision:
        engine_kwargs["revision"] = profile.spec.source.revision
    # Each engine worker (one per device) asks for one GPU of the class, so Ray places it only there.
    bundle = {"GPU": 1, ray_resource(hardware.metadata.name): 1}
    config: dict[str, Any] = {
        "model_loading_config": {"model_id": key, "model_source": deployment.source},
        "deployment_config": {
            "num_replicas": deployment.replicas,
            "max_ongoing_requests": deployment.max_batch_size * 2,
            "request_router_config": {"request_router_class": POLICY_ROUTER_CLASS,
                                      "request_router_kwargs": {"policy": policy}},
        },
        "engine_kwargs": engine_kwargs,
        "placement_group_config": {"bundle_per_worker": bundle, "strategy": "PACK"},
    }
    if hardware.spec.ray_accelerator_type:
        config["accelerator_type"] = hardware.spec.ray_accelerator_type
    return config


def build_llm_application(workflow: AgentWorkflow, models: Mapping[str, ModelDeployment], keys: Mapping[str, str],
                          classes: Mapping[str, HardwareClass],
                          profiles: Mapping[str, ModelProfile]) -> dict[str, Any] | None:
    """The Ray Serve LLM application serving the workflow's vLLM deployments (None when it has none)."""
    first_stage = {}
    for stage in workflow.spec.stages:
        if stage.name in keys:
            first_stage.setdefault(keys[stage.name], stage)
    configs = []
    for key, deployment in models.items():
        if deployment.engine != "vllm":
            continue
        profile = profiles[deployment.model]
        # vLLM speculates one way per engine: the first stage that calls the deployment decides it.
        speculative = speculative_config(first_stage[key].speculative_decoding, profile, profiles)
        configs.append(build_llm_config(key, deployment, classes[deployment.hardware_class], profile, speculative,
                                        workflow.spec.serve.policy))
    if not configs:
        return None
    name = workflow.metadata.name
    return {"name": llm_application_name(name), "route_prefix": llm_route_prefix(name),
            "import_path": LLM_IMPORT_PATH, "args": {"llm_configs": configs}}
