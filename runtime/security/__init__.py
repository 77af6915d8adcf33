"""Process confinement for container processes: capabilities and seccomp.

`capabilities` decides and applies the capability sets; `seccomp` builds the
syscall filter from the shipped Docker-equivalent profile or a user's file.
Both split preparation (before pivot_root) from application (right before exec).
"""
