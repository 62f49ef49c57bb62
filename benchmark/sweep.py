"""Where sweeps queued before the package layout pickled their jobs (`benchmark.sweep.FitJob`): the sweep itself
is `benchmark.orchestration.sweep`."""
from benchmark.orchestration.sweep import FitJob  # noqa: F401
