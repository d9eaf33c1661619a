"""Measuring models: cost (parameters, MACs) here; ``sparsity`` and ``importance`` in their submodules.

>>> from connprune.measure import cost
>>> cost(model, (3, 32, 32))                      # doctest: +SKIP
Cost(params=272474, macs=41...)

Note: the function :func:`cost` shadows the submodule of the same name as an attribute of this package; import
other names from the submodule with ``from connprune.measure.cost import ...``.
"""

from __future__ import annotations

from connprune.measure.cost import Cost, cost, count_macs, count_params

__all__ = ["Cost", "cost", "count_macs", "count_params"]
