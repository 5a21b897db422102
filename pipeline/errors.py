"""Errors a user can act on, and how a stage reports them.

Every error the pipeline raises on purpose (bad params, a damaged artifact, a model that
does not fit) derives from :class:`PipelineError` and says what to change. A stage's
``main`` is wrapped in :func:`stage_main`, so such an error ends the stage with one line
naming the stage, and exit status 1, instead of a traceback (Ctrl-C: one line, status 130).
"""

from __future__ import annotations

import functools
import sys
import time


class PipelineError(Exception):
    """Something the user can fix; the message says what and how."""


class AcquireError(PipelineError):
    """The source cannot deliver what params.yaml asks for."""


class ModelError(PipelineError):
    """A model cannot be found, loaded or built; the message says how to provide it."""


def stage_main(stage: str):
    """Decorate a stage's ``main(argv)`` to report a PipelineError in one line, and to record
    the stage's wall time in ``metrics/timings/stages/<stage>.json`` (git-ignored, not a DVC
    output: times differ between runs that make the same outputs)."""
    def decorate(main):
        @functools.wraps(main)
        def run(argv: list[str] | None = None):
            from pipeline.files import write_json
            from pipeline.paths import TIMINGS_DIR

            started = time.perf_counter()
            try:
                result = main(argv)
            except PipelineError as error:
                print(f"{stage}: {error}", file=sys.stderr)
                sys.exit(1)
            except KeyboardInterrupt:  # every output is written whole or not at all
                print(f"{stage}: interrupted; finished outputs are kept, and the next run "
                      "continues from its last checkpoint or redoes the stage", file=sys.stderr)
                sys.exit(130)
            write_json(TIMINGS_DIR / "stages" / f"{stage}.json",
                       {"stage": stage, "wall_seconds": round(time.perf_counter() - started, 1)})
            return result
        return run
    return decorate
