"""The voxloop application: the CLI, its commands, the demo and its reports, and the composition
root that picks local or cloud engines. The only part of `agent` that names plugins."""
