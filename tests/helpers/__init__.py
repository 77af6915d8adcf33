"""Code the tests share, imported as `helpers.<module>` (pyproject's pytest `pythonpath`
puts tests/ on sys.path). Fixtures live in the conftest.py of the folder that uses them;
these modules hold plain functions and classes, so none is named test_*.

- busybox: a minimal busybox root filesystem for containers
- cgroups: find and remove a test's parent cgroup in every hierarchy
- engine: run a container to its end and read what it printed
- kernel: a private engine root and kernelspecs for kernel tests; run cells
- lab: a real `jupyter server` with the extension, and its notebooks
- net: a free loopback port
- registry: a real distribution registry, a fault-injecting proxy, small images
- runc: drive `cellbox-runc` the way an OCI harness does
"""
