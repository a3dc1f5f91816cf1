"""Tasks: what differs between kinds of model, one module each, behind ``tasks.base.Task``."""
