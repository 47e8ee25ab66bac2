"""The programs behind the bundled pipelines: ``video.py`` and the papers it reads.

Their definitions (name, steps, weights, the argv that starts them) are in the
core's registry, ``progress_service.pipelines``.
"""

# Nothing here imports a pipeline's module: ``python -m worker.pipelines.video`` imports
# this package first, and the module must not be in sys.modules before runpy runs it.
