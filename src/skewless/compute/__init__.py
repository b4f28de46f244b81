"""Where batch work runs: in this process, or as tasks on a Ray cluster, with the same results."""
