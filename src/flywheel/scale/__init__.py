"""Past one machine, on Ray: training on Ray Train, scoring on Ray Data, serving on Ray
Serve (README "Scale-out"). Nothing here imports Ray until a function that needs it runs:
without ``ray_address`` flywheel never touches Ray."""

__all__: list[str] = []
