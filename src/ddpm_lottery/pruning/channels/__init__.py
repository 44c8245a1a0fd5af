"""Structured (channel) tickets: which channels can go, masking them exactly, and compacting the network.

A *channel group* is a set of channels that can be removed from a ``UNet2DModel`` without touching
the residual stream, so that the smaller network computes exactly what the masked one does:

* **resnet**: the inner width of a ResNet block: ``conv1``'s filters, the matching rows of
  ``time_emb_proj`` (added to them), ``norm2``'s channels and ``conv2``'s input columns;
* **attention**: the inner dimensions of an attention block: rows of ``to_q``, ``to_k``, ``to_v``
  and columns of ``to_out.0`` (Torch-Pruning's dependency graph couples all four);
* **time**: the hidden units of the time embedding (``linear_1`` rows, ``linear_2`` columns).

Residual-stream channels (block outputs, skip concatenations, samplers, ``conv_in``/``conv_out``)
stay whole.  Their group norms straddle concatenated skips, so removing one of them changes the
statistics every other channel of its group is normalised by: no compaction can then equal the
trained network.  Diff-Pruning prunes them anyway and fine-tunes the difference away; here a
compacted ticket *is* the ticket that was trained and measured.

Two rules make compaction exact:

* ``norm2`` normalises each of its groups over the channels that survive (:class:`KeptChannelGroupNorm`,
  used while a channel ticket trains and whenever it is evaluated), and every group loses the same
  number of channels, so the compacted ``GroupNorm(G, C')`` has the same groups.  Channels therefore
  move in *slots*: slot r of a group of channels is the r-th weakest survivor of every norm group (or
  attention head).
* Attention scores use ``1/sqrt(head_dim)``; diffusers takes it from the tensor, so compaction folds
  ``sqrt(d'/d)`` into ``to_q``.

The criterion is the mean absolute weight of a channel's rows in its producers (the L1 filter norm
per weight, comparable across layers for the global strategy).

The modules, bottom to top:

* :mod:`~ddpm_lottery.pruning.channels.norms`: group norms over the kept channels (plain torch);
* :mod:`~ddpm_lottery.pruning.channels.groups`: the channel groups of a network, traced with
  Torch-Pruning's dependency graph, and stored as JSON;
* :mod:`~ddpm_lottery.pruning.channels.masks`: channel masks, what they mean for weights and norms,
  and stored as safetensors;
* :mod:`~ddpm_lottery.pruning.channels.rounds`: channel scores and one pruning round (in slots),
  random channel masks;
* :mod:`~ddpm_lottery.pruning.channels.unstructured`: channels from unstructured tickets (emptied
  channels, refilling);
* :mod:`~ddpm_lottery.pruning.channels.compact`: the physically smaller network, stored without pickle.
"""
