"""The programs' settings: every option, its default, and the checks made before anything starts."""
