"""Tessera's Kubernetes operator (kopf): AgentWorkflows in, plans and RayService children out."""
