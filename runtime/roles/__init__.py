"""The processes of a container's life, one module each (youki's process/ and init/).

    caller (engine/launcher, zygote, cellbox-runc)
     └─ monitor.py          stays on the host: cgroup, hooks, start gate, records the exit
         ├─ intermediate.py with a user namespace: enters it, gets its id maps, forks the init
         └─ container_init.py PID 1: namespaces, rootfs, pivot_root; forks the user's process,
                             then reaps zombies and forwards signals
     exec_helper.py         one more process in a running container (setns, fork, exec)
     zygote_server.py       a pre-imported helper that forks a monitor or exec helper per request

They talk in protocol.py's typed messages. init.py is the entry point the launcher runs
(`python -I -S -c BOOT create|exec|zygote ...`); common.py, console.py and hooks.py hold
what more than one role does.
"""
