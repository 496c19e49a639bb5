"""Suite-wide set-up that must happen before any test module is imported.

Ray reads its environment when it is imported, and several modules import it (some only
inside a test): the loopback cluster's settings are made here, first, so every Ray process
the suite starts uses a token of this run's own and never looks at ~/.ray or the machine's
network address (see nasalloc/execute/local_ray_cluster.py).
"""

from nasalloc.execute.local_ray_cluster import prepare_ray_environment

prepare_ray_environment()
