"""The study side: the config, validated and typed, and the job plan built from it.

Used by the workflow at DAG-build time (``workflow/rules/common.smk``) and by
``lorascope validate-config``; no stage imports it at run time, so editing how a config is
parsed, sliced or planned reruns no job.

* :mod:`~lorascope.study.schema`: the JSON schema (analyses bring their own blocks);
* :mod:`~lorascope.study.spec`: the typed, frozen :class:`Study`;
* :mod:`~lorascope.study.parse`: :func:`load_study`, the single entry point;
* :mod:`~lorascope.study.slices`: each rule's config slice;
* :mod:`~lorascope.study.plan`: the jobs and the checks that need each model's shape;
* :mod:`~lorascope.study.codedeps`: the code version each rule carries.
"""
