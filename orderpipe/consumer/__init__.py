"""The consumer's loop and its collaborators: commits, assignment, reporting, the process's instance slot."""
