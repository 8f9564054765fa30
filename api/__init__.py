"""Tessera's API: pydantic models of every custom resource (``tessera.dev/v1alpha1``) and their validation."""

from tessera.api.common import API_VERSION, GROUP, VERSION, Condition, ObjectMeta, set_condition
from tessera.api.hardware import HARDWARE_CLASS_LABEL, DeviceType, Dtype, HardwareClass, HardwareClassSpec
from tessera.api.model_profile import ModelProfile, ModelProfileSpec
from tessera.api.plan import Plan, PredictedFigures, StagePlan
from tessera.api.power import CappingPolicy, PowerBudget, PowerBudgetSpec
from tessera.api.validation import FieldProblem, ResourceError, parse_resource, stage_graph
from tessera.api.workflow import (
    SLO, AgentWorkflow, AgentWorkflowSpec, AgentWorkflowStatus, DraftMethod, GenerationOptions, LLMCall, Objective,
    Phase, Placement, ServeApplication, SpeculativeDecoding, Stage, StageKind,
)

__all__ = [
    "API_VERSION", "GROUP", "VERSION", "HARDWARE_CLASS_LABEL", "AgentWorkflow", "AgentWorkflowSpec",
    "AgentWorkflowStatus", "CappingPolicy", "Condition", "DeviceType", "DraftMethod", "Dtype", "FieldProblem", "GenerationOptions", "LLMCall",
    "HardwareClass", "HardwareClassSpec", "ModelProfile", "ModelProfileSpec", "ObjectMeta", "Objective", "Phase",
    "Placement", "Plan", "PowerBudget", "PowerBudgetSpec", "PredictedFigures", "ResourceError", "SLO",
    "ServeApplication", "SpeculativeDecoding", "Stage", "StageKind", "StagePlan", "parse_resource", "set_condition", "stage_graph",
]
