"""Tessera's workflow runtime: any AgentWorkflow's DAG executed on Ray Serve as its plan places it."""
