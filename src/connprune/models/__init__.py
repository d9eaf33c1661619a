"""The model zoo: one registry, one naming scheme.

>>> from connprune import models
>>> model = models.create("resnet20", num_classes=10)          # doctest: +SKIP
>>> models.names()                                              # doctest: +SKIP
['mlp', 'lenet300-100', 'mlp-500-300', 'lenet5', 'vgg11', ..., 'mobilenetv2']
>>> models.spec("resnet18").default_input_shape                 # doctest: +SKIP
(3, 224, 224)

Every config takes ``num_classes``, ``in_channels`` and ``input_size`` (square inputs); family keys: ``widths``
(``mlp``), ``small_input`` (``resnet18``, ``resnet50``), ``width_mult`` (``mobilenetv2``). Unknown names and keys,
and bad values, raise :class:`connprune.errors.UserError`. A created model carries ``connprune_arch`` and
``connprune_config`` (the full, JSON-serialisable config) so that
``models.create(model.connprune_arch, **model.connprune_config)`` rebuilds it.

All models are built from plain ``nn.Conv2d``/``nn.Linear``/``nn.BatchNorm2d``/``nn.ReLU(6)``/pooling/``nn.Flatten``
modules with residual adds written in ``forward``, so torch.fx and torch-pruning's ``DependencyGraph`` trace them.

| name | family | paper | default input, classes |
|---|---|---|---|
| ``mlp``, ``lenet300-100``, ``mlp-500-300`` | mlp | LeCun 1998; Han et al. 2015; Ganesh et al. 2020 | 1×28×28, 10 |
| ``lenet5`` | lenet | LeCun et al. 1998 | 1×28×28, 10 |
| ``vgg11/13/16/19`` | vgg | Simonyan & Zisserman 2015 (CIFAR form, BN) | 3×32×32, 10 |
| ``resnet20/32/56/110`` | resnet-cifar | He et al. 2016 | 3×32×32, 10 |
| ``resnet18``, ``resnet50`` | resnet-imagenet | He et al. 2016 (torchvision layout) | 3×224×224, 1000 |
| ``mobilenetv2`` | mobilenetv2 | Sandler et al. 2018 (CIFAR form) | 3×32×32, 10 |
"""

from __future__ import annotations

# Importing the family modules registers their names; the import order is the order of names().
# isort: off
from connprune.models import mlp as _mlp  # noqa: F401
from connprune.models import lenet as _lenet  # noqa: F401
from connprune.models import vgg as _vgg  # noqa: F401
from connprune.models import resnet_cifar as _resnet_cifar  # noqa: F401
from connprune.models import resnet_imagenet as _resnet_imagenet  # noqa: F401
from connprune.models import mobilenetv2 as _mobilenetv2  # noqa: F401
# isort: on
from connprune.models.registry import (ModelSpec, create, example_inputs, input_shape, is_factory, is_zoo_model,
                                       names, resolve_config, spec)

__all__ = ["ModelSpec", "create", "example_inputs", "input_shape", "is_factory", "is_zoo_model", "names",
           "resolve_config", "spec"]
