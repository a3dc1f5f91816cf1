"""Tasks: what differs between kinds of model, one package each, behind ``tasks.base.Task``."""
