"""Exit statuses a process of the stack uses to say why it stopped, read by the launcher (launcher/supervisor.py).

Most exits are worth a restart (a crash, a kill). One is not: a model that breaks its contract or whose ``load``
fails fails the same way on every start and every worker, so the launcher stops at the first such exit.
"""

#: The model cannot start: its class is missing or breaks the contract, its load or compilation fails
#: (sysexits' EX_CONFIG). The process's last line of output names the model, the method and the cause.
MODEL_BROKEN = 78
#: How that last line begins, after the log's own prefix: the launcher repeats what follows as its own last line.
MODEL_BROKEN_LINE = "the model cannot start: "
