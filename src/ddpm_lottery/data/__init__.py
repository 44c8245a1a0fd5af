"""Datasets: load real images as uint8 tensors, fit them to the network, download them.

* :mod:`~ddpm_lottery.data.images`: the loaded images (:class:`~ddpm_lottery.data.images.ImageSet`),
  fitting them to the network, the model's pixel range, and the data's fingerprint;
* :mod:`~ddpm_lottery.data.loaders`: :func:`~ddpm_lottery.data.loaders.load_dataset`, one split of
  one source: :mod:`~ddpm_lottery.data.mnist` (the embedded digits, MNIST-like IDX files),
  :mod:`~ddpm_lottery.data.cifar` (CIFAR-10/100 pickles), :mod:`~ddpm_lottery.data.folders` (image folders);
* :mod:`~ddpm_lottery.data.download`: fetching the official archives, checked against their MD5.
"""
