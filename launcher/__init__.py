"""The launchers: the `visiontune` command and the processes it starts, above both the service and the workers."""
