"""The node power agent: reads each accelerator's draw and limit, exports them, applies the caps a controller decides."""
