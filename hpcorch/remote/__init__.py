"""Work from a laptop: hpcorch on the login node, reached over SSH (paramiko).

A thin client. The laptop validates the job, syncs the resolved job file (and the user's code
folder) to the login node, and runs the login node's own ``hpcorch`` there over one
authenticated SSH transport that a small local agent process keeps open between commands:

    sshconfig   the target as OpenSSH resolves it (``ssh -G``: Include, ProxyJump, IdentityFile)
    hostkeys    known_hosts: unknown and changed keys refused; ``--accept-new`` stores a new one
    connect     one paramiko Transport (through jump hosts), authenticated once (keys, 2FA)
    agent       the local process owning that transport, reached over a 0600 Unix socket
    client      ``Session``: what every other module calls to run a command on the login node
    sync        incremental file transfer (only changed files move; appended logs by offset)
    files       the login node's side of ``sync`` (``python -m hpcorch.remote.files``)
    ops         submit, ls, status, logs, cancel, resume and pull for jobs recorded as remote
"""
