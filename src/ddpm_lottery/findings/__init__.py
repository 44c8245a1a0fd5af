"""The findings: the paper's questions answered from a study's (or a run's) stored measurements.

(a) the sparsest level of each search not worse than the dense model, (b) ``varying`` against the searches
that impose no profile, (c) each ticket against its controls, (d) the CKA of ticket pairs above its
baseline, upstream against downstream; each a difference with an interval and a verdict.

:mod:`.collect` reads the stored runs into a collection, :mod:`.questions` answers the questions from it,
:mod:`.render` writes the answers as markdown, HTML and ``findings.json``; the statistics are
:mod:`ddpm_lottery.measures.stats`.
"""
