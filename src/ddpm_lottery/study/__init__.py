"""Studies: a declared study, from its file to its findings and report (``ddpm-lottery study FILE``).

spec → plan → estimate → run:

- :mod:`~ddpm_lottery.study.spec`: the study file (``Study``, its ``PlannedRun`` runs, ``load_study``) and the
  studies shipped in ``shipped/`` (the quickstart, the CPU studies, the paper-scale recipes), named by file name;
- :mod:`~ddpm_lottery.study.plan`: what is left to do in the study folder (``Plan``, ``make_plan``);
- :mod:`~ddpm_lottery.study.estimate`: what that costs on this device (``measure_costs``, ``describe_plan``);
- :mod:`~ddpm_lottery.study.execute`: running it (``execute_study``): train, measure, compare, frontier, then
  the findings and :mod:`~ddpm_lottery.study.report` (``OUT/report.html``), in the folder that
  :mod:`~ddpm_lottery.study.folder` keeps to one study;
- :mod:`~ddpm_lottery.study.quickstart`: the smallest shipped study, end to end.

Nothing is imported here: each module is loaded when used.
"""
