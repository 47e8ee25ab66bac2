"""The worker side: the RQ entry point, the subprocess runner, the output parser, the pipelines."""
