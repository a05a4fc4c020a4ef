"""CPU speed paths, off unless asked for: ``use_cpu_kernels(model)`` switches a built model onto them
(the stages do it with ``cpu_kernels: true``). Importing this package registers nothing anywhere."""

from jf_lightning.kernels.cpu import use_cpu_kernels

__all__ = ["use_cpu_kernels"]
