# The report: the paper's Tables 1-4 and the figures, as Markdown, LaTeX and one
# self-contained HTML page in reports/{study}/.


localrules:
    report,


rule report:
    input:
        evaluations="results/{study}/summary/evaluations.parquet",
        convergence="results/{study}/summary/convergence.parquet",
        training_log="results/{study}/summary/training_log.parquet",
        boundary="results/{study}/summary/boundary.parquet",
        lens="results/{study}/summary/lens.parquet",
        anatomy="results/{study}/summary/anatomy.parquet",
        study="results/{study}/summary/study.json",
    output:
        md=report(
            "reports/{study}/report.md",
            caption="../report/report.rst",
            category="Report",
            labels={"format": "Markdown"},
        ),
        tex="reports/{study}/report.tex",
        html=report(
            "reports/{study}/report.html",
            caption="../report/report.rst",
            category="Report",
            labels={"format": "HTML (self-contained)"},
        ),
    log:
        "results/{study}/logs/report.log",
    conda:
        ENV
    threads: 1
    resources:
        gpu=0,
        mem_mb=4000,
        runtime=10,
    params:
        cfg=report_params,
        out_dir="reports/{study}",
        code=code_version("lorascope.report", data=["reference/*.yaml"]),
    script:
        "../scripts/report.py"
