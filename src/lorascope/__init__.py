"""lorascope: where in the network does relevance live?

A Snakemake workflow plus this package, reproducing and extending the mechanistic analysis
of LoRA-fine-tuned LLM passage rerankers. The workflow's rules call the entry points in
:mod:`lorascope.cli`; everything else is importable and unit-tested.
"""

__version__ = "0.1.0"
