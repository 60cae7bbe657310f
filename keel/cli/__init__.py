"""The `keel` command line: run the stack, chat with an agent, control runs, check an app, start a project."""
