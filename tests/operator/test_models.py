"""Model deployments from plans (pure), and every Ray Serve LLM config the operator writes, checked by Ray's own
``LLMConfig`` (ray.serve.llm imports only where vLLM is installed: ``make test`` runs these in .venv/llm-check)."""

from __future__ import annotations

import pytest
import yaml

from tessera.api import AgentWorkflow, HardwareClass, Plan, SpeculativeDecoding, StagePlan
from tessera.api.model_profile import ModelProfile
from tessera.api.validation import ResourceError, parse_resource
from tessera.api.serve import WorkflowAppArgs
from tessera.cli.documents import load
from tessera.operator.builders import build_rayservice, build_serve_config
from tessera.operator.models import (
    POLICY_ROUTER_CLASS, build_model_deployments, model_deployment_key, speculative_config,
)
from tessera.operator.settings import OperatorSettings
from tessera_devtools import EXAMPLES

from .conftest import workflow

DOCS = load([str(EXAMPLES / "inventory"), str(EXAMPLES / "workflows")])
CLASSES = {hc.metadata.name: hc for hc in DOCS.of_kind(HardwareClass)}
PROFILES = {mp.metadata.name: mp for mp in DOCS.of_kind(ModelProfile)}
WORKFLOWS = {wf.metadata.name: wf for wf in DOCS.of_kind(AgentWorkflow)}


def placed(cls: str, replicas: int = 1, tp: int = 1, batch: int = 4, draft: str | None = None) -> StagePlan:
    return StagePlan(hardware_class=cls, replicas=replicas, tensor_parallel=tp, batch_size=batch,
                     predicted_latency_ms=10, watts=100, usd_per_hour=1, draft_hardware_class=draft)


def plan_on(wf: AgentWorkflow, llm_class: str, other_class: str = "cpu-epyc", **per_stage: StagePlan) -> Plan:
    """Every llm stage on ``llm_class`` (TP 2 on accelerators), the other stages on ``other_class``."""
    tp = 1 if CLASSES[llm_class].spec.device_type.value == "cpu" else 2
    stages = {s.name: per_stage.get(s.name) or (placed(llm_class, tp=tp) if s.kind.value == "llm" else placed(other_class))
              for s in wf.spec.stages}
    return Plan(feasible=True, objective="tco", stages=stages)


def two_llm_stages(speculative: dict | None = None):
    return workflow("wf", stages=[
        {"name": "a", "kind": "llm", "model": "llama-3-1-8b", "inputTokens": 10, "outputTokens": 10,
         **({"speculativeDecoding": speculative} if speculative else {})},
        {"name": "b", "kind": "llm", "model": "llama-3-1-8b", "inputTokens": 10, "outputTokens": 10, "dependsOn": ["a"]},
        {"name": "c", "kind": "llm", "model": "smollm2-135m", "inputTokens": 10, "outputTokens": 10, "dependsOn": ["b"]},
    ])


def parse(body) -> AgentWorkflow:
    body["metadata"]["uid"] = "uid-1"
    return AgentWorkflow.model_validate(body)


# --------------------------------------------------------------------------- ModelProfile: weights and engine options
@pytest.mark.parametrize("spec, path, reason", [
    ({"source": {"hub": "a/b", "path": "/m"}}, "spec.source", "exactly one of hub, uri, path, package"),
    ({"source": {}}, "spec.source", "exactly one"),
    ({"source": {"hub": "no-slash"}}, "spec.source.hub", "pattern"),
    ({"source": {"uri": "ftp://x"}}, "spec.source.uri", "pattern"),
    ({"source": {"path": "relative/dir"}}, "spec.source.path", "pattern"),
    ({"source": {"path": "/m", "revision": "main"}}, "spec.source", "revision"),
    ({"engineOptions": {"vllm": {"gpuMemoryUtilization": 1.5}}}, "spec.engineOptions.vllm.gpuMemoryUtilization", ""),
    ({"engineOptions": {"vllm": {"extra": {"tensor_parallel_size": 8}}}}, "spec.engineOptions.vllm",
     "extra: tensor_parallel_size come from the plan"),
    ({"engineOptions": {"cpu": {"maxBatchSize": 0}}}, "spec.engineOptions.cpu.maxBatchSize", ""),
])
def test_a_bad_profile_names_the_field(spec, path, reason):
    doc = {"apiVersion": "tessera.dev/v1alpha1", "kind": "ModelProfile", "metadata": {"name": "m"},
           "spec": {"parametersBillions": 1, "layers": 2, "hiddenSize": 64, **spec}}
    with pytest.raises(ResourceError) as caught:
        parse_resource(doc)
    [problem] = caught.value.problems
    assert problem.path == path and reason in problem.reason


def test_profile_options_reach_vllms_engine_kwargs():
    profile = PROFILES["llama-3-1-8b"]
    options = profile.spec.engine_options.vllm.model_copy(update={"extra": {"enforce_eager": True}})
    assert options.engine_kwargs() == {"enforce_eager": True, "max_model_len": 16384, "gpu_memory_utilization": 0.9,
                                       "enable_prefix_caching": True}


# --------------------------------------------------------------------------- keys and sharing (pure)
@pytest.mark.parametrize("stages, expected", [
    # stage -> plan ; key -> (replicas, tp, engine)
    ({"a": placed("h100-sxm", 2), "b": placed("h100-sxm", 1), "c": placed("cpu-epyc")},
     {"llama-3-1-8b@h100-sxm": (3, 1, "vllm"), "smollm2-135m@cpu-epyc": (1, 1, "cpu")}),
    ({"a": placed("h100-sxm", 1, tp=4), "b": placed("h100-sxm", 2, tp=2), "c": placed("h100-sxm")},
     # 4 + 4 devices at TP 4 -> 2 replicas; SmolLM2 comes from a wheel: Tessera's engine even on a GPU
     {"llama-3-1-8b@h100-sxm": (2, 4, "vllm"), "smollm2-135m@h100-sxm": (1, 1, "cpu")}),
    ({"a": placed("h100-sxm"), "b": placed("mi300x", 3), "c": placed("cpu-epyc", 2)},
     {"llama-3-1-8b@h100-sxm": (1, 1, "vllm"), "llama-3-1-8b@mi300x": (3, 1, "vllm"),
      "smollm2-135m@cpu-epyc": (2, 1, "cpu")}),
    ({"a": placed("cpu-epyc"), "b": placed("cpu-epyc"), "c": placed("cpu-epyc")},
     {"llama-3-1-8b@cpu-epyc": (2, 1, "cpu"), "smollm2-135m@cpu-epyc": (1, 1, "cpu")}),
    # Ray Serve LLM places vLLM on GPUs only: Gaudi runs Tessera's engine
    ({"a": placed("gaudi3"), "b": placed("gaudi3"), "c": placed("cpu-epyc")},
     {"llama-3-1-8b@gaudi3": (2, 1, "cpu"), "smollm2-135m@cpu-epyc": (1, 1, "cpu")}),
    # a draft on another class than its target (Dovetail) stays with Tessera's engine
    ({"a": placed("h100-sxm", draft="l4"), "b": placed("h100-sxm"), "c": placed("cpu-epyc")},
     {"llama-3-1-8b@h100-sxm": (2, 1, "cpu"), "smollm2-135m@cpu-epyc": (1, 1, "cpu")}),
])
def test_one_model_deployment_per_model_and_class(stages, expected):
    wf = parse(two_llm_stages())
    models, keys = build_model_deployments(wf, Plan(feasible=True, objective="tco", stages=stages), CLASSES, PROFILES)
    assert {k: (m.replicas, m.tensor_parallel, m.engine) for k, m in models.items()} == expected
    assert keys == {name: model_deployment_key(wf.spec.stages[i].model, stages[name].hardware_class)
                    for i, name in enumerate("abc")}


def test_serve_config_names_each_llm_stages_model_deployment():
    wf = WORKFLOWS["text2sql"]
    config = build_serve_config(wf, plan_on(wf, "cpu-epyc"), CLASSES, PROFILES)
    # no accelerator: no vLLM app; the model deployments and the runtime
    assert [app["name"] for app in config["applications"]] == ["text2sql-models", "text2sql"]
    args = WorkflowAppArgs.model_validate(config["applications"][1]["args"])
    llm = [s.name for s in wf.spec.stages if s.kind.value == "llm"]
    assert len(llm) >= 2 and set(args.models) == {"llama-3-1-70b@cpu-epyc"}
    assert {args.deployments[name].model_deployment for name in llm} == {"llama-3-1-70b@cpu-epyc"}
    assert args.models["llama-3-1-70b@cpu-epyc"].replicas == len(llm)
    assert all(args.deployments[s.name].model_deployment is None for s in wf.spec.stages if s.name not in llm)


def test_model_deployment_actor_options_hold_the_class_devices():
    wf = parse(two_llm_stages())
    models, _ = build_model_deployments(wf, plan_on(wf, "mi300x"), CLASSES, PROFILES)
    assert models["llama-3-1-8b@mi300x"].ray_actor_options == {
        "num_cpus": 1, "num_gpus": 2, "resources": {"tessera.dev/mi300x": 2}}


@pytest.mark.parametrize("spec, eagle, expected", [
    ({"method": "ngram", "draftLength": 5},
     None, {"method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_max": 4, "prompt_lookup_min": 2}),
    ({"method": "draftModel", "draftModel": "llama-3-1-8b", "draftLength": 3},
     None, {"model": "meta-llama/Llama-3.1-8B-Instruct", "num_speculative_tokens": 3}),
    ({"method": "draftHead"}, {"hub": "yuhuili/EAGLE-LLaMA3.1-Instruct-8B"},
     {"method": "eagle", "model": "yuhuili/EAGLE-LLaMA3.1-Instruct-8B", "num_speculative_tokens": 4}),
    ({"method": "draftHead"}, None,  # no EAGLE head named: prompt lookup
     {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4, "prompt_lookup_min": 2}),
    ({"method": "draftModel", "draftModel": "no-such-profile"}, None, None),
    ({"method": "ngram", "enabled": False}, None, None),
])
def test_speculative_config(spec, eagle, expected):
    profile = PROFILES["llama-3-1-70b"]
    if eagle:
        profile = profile.model_copy(update={"spec": profile.spec.model_copy(update={
            "eagle_head": type(profile.spec.source).model_validate(eagle)})})
    assert speculative_config(SpeculativeDecoding.model_validate(spec), profile, PROFILES) == expected


# --------------------------------------------------------------------------- Ray's own schema
@pytest.fixture(scope="module")
def ray_llm_config():
    """Ray Serve LLM's LLMConfig; these tests skip where vLLM cannot be imported."""
    llm = pytest.importorskip("ray.serve.llm", exc_type=ImportError,
                              reason="ray.serve.llm needs vLLM: `make test` runs these in .venv/llm-check")
    return llm.LLMConfig


def written_llm_configs(wf: AgentWorkflow, plan: Plan) -> list[dict]:
    child = build_rayservice(wf, plan, CLASSES, OperatorSettings(), profiles=PROFILES)
    apps = yaml.safe_load(child["spec"]["serveConfigV2"])["applications"]
    return [config for app in apps if app["import_path"] == "ray.serve.llm:build_openai_app"
            for config in app["args"]["llm_configs"]]


CASES = [(name, cls) for name in sorted(WORKFLOWS) for cls in ("h100-sxm", "mi300x", "a100-80gb", "l4")]


@pytest.mark.parametrize("name, cls", CASES)
def test_every_written_llm_config_passes_rays_llm_config(ray_llm_config, name, cls):
    wf = WORKFLOWS[name]
    configs = written_llm_configs(wf, plan_on(wf, cls))
    assert configs, "an accelerator-placed workflow gets a Ray Serve LLM application"
    for written in configs:
        config = ray_llm_config.model_validate(written)
        assert config.accelerator_type == CLASSES[cls].spec.ray_accelerator_type
        assert config.engine_kwargs["tensor_parallel_size"] == 2
        assert config.engine_kwargs["scheduling_policy"] == "priority"
        assert config.deployment_config["request_router_config"]["request_router_class"] == POLICY_ROUTER_CLASS
        profile = PROFILES[config.model_loading_config.model_id.split("@")[0]]
        assert config.model_loading_config.model_source == profile.spec.source.location
        assert config.engine_kwargs["max_model_len"] == profile.spec.engine_options.vllm.max_model_len


def test_gpu_placed_text2sql_carries_its_ngram_speculation(ray_llm_config):
    wf = WORKFLOWS["text2sql"]
    [written] = written_llm_configs(wf, plan_on(wf, "h200"))
    config = ray_llm_config.model_validate(written)
    assert config.engine_kwargs["speculative_config"]["method"] == "ngram"
    assert config.engine_kwargs["quantization"] == "awq"


def test_rays_llm_config_refuses_what_tessera_must_not_write(ray_llm_config):
    """The check can fail: a config with a bad accelerator type or deployment option is refused."""
    wf = WORKFLOWS["chat"]
    [written] = written_llm_configs(wf, plan_on(wf, "h100-sxm"))
    with pytest.raises(ValueError, match="accelerator"):
        ray_llm_config.model_validate({**written, "accelerator_type": "H100-SXM5-80GB"})
    with pytest.raises(ValueError, match="deployment config"):
        ray_llm_config.model_validate({**written, "deployment_config": {"max_ongoing_requests": -1}})


@pytest.mark.parametrize("llm_class, spec_image, image", [
    ("h100-sxm", None, OperatorSettings().vllm_worker_image),  # vLLM runs: the image that carries it
    ("cpu-epyc", None, OperatorSettings().worker_image),
    ("h100-sxm", "my/own:1", "my/own:1"),  # the workflow's own image wins
])
def test_the_pods_of_a_workflow_that_runs_vllm_use_the_vllm_image(llm_class, spec_image, image):
    wf = WORKFLOWS["chat"]
    if spec_image:
        wf = wf.model_copy(update={"spec": wf.spec.model_copy(update={
            "serve": wf.spec.serve.model_copy(update={"image": spec_image})})})
    child = build_rayservice(wf, plan_on(wf, llm_class), CLASSES, OperatorSettings(), profiles=PROFILES)
    cluster = child["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]] + cluster["workerGroupSpecs"]
    assert {c["image"] for pod in pods for c in pod["template"]["spec"]["containers"]} == {image}
