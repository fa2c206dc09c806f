"""The sweep beyond one machine: `sweep --engine ray|slurm` (cli), the driver's preparation and naming
(plan), the per-experiment worker every engine runs (worker, guard), the engines (ray_engine,
slurm_engine) and the driver's progress line (progress). Ray and submitit are optional extras,
imported only by their engine."""
