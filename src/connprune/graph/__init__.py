"""What can be pruned together and what feeds what, traced with torch-pruning's ``DependencyGraph``.

>>> from connprune import graph
>>> g = graph.build(model, torch.randn(1, 3, 32, 32))            # doctest: +SKIP
>>> g.group_of("layer1.0.conv2").producers                       # doctest: +SKIP
('conv1', 'layer1.0.conv2', 'layer1.1.conv2', 'layer1.2.conv2')
>>> [(p.parent, p.child) for p in g.pairs][:2]                   # doctest: +SKIP
[('conv1', 'layer1.0.conv1'), ('layer1.0.conv1', 'layer1.0.conv2')]

See :mod:`connprune.graph.dependency` for the rules (groups, residual streams, depthwise convs, pairs) and
:mod:`connprune.graph.inputs` for example inputs.
"""

from __future__ import annotations

from connprune.graph.dependency import (ChannelGroup, LayerPair, ModelGraph, build, check_supported, is_depthwise,
                                        is_grouped)
from connprune.graph.inputs import ExampleInputs, as_inputs, for_model, probe

__all__ = ["ChannelGroup", "ExampleInputs", "LayerPair", "ModelGraph", "as_inputs", "build", "check_supported",
           "for_model", "is_depthwise", "is_grouped", "probe"]
