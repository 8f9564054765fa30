"""Tessera's planner: roofline cost model, queueing, power and TCO, and SLA- and power-constrained placement.

Pure Python (no kopf, kubernetes or ray): the operator, the workers and the simulator all call it.

    inventory = Inventory.build(hardware_classes, nodes, power_budgets, model_profiles)
    plan = plan_workflow(workflow.spec, inventory, solver="fast")
"""

from tessera.planner.cost import (
    CostParameters, llm_call_time, phase_watts, stage_service_time, transfer_seconds, usd_per_hour,
)
from tessera.planner.inventory import Inventory, PowerGroup, devices_from_nodes
from tessera.planner.planning import WhatIf, plan_workflow, what_if

__all__ = [
    "CostParameters", "Inventory", "PowerGroup", "WhatIf", "devices_from_nodes", "llm_call_time", "phase_watts",
    "plan_workflow", "stage_service_time", "transfer_seconds", "usd_per_hour", "what_if",
]
