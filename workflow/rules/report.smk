# The report: the paper's Tables 1-4, the analyses' sections and the figures, as Markdown,
# LaTeX and one self-contained HTML page in reports/{study}/.


localrules:
    report,


rule report:
    input:
        **summary_targets(),
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
        logs("report.log"),
    conda:
        ENV
    threads: 1
    resources:
        gpu=0,
        mem_mb=4000,
        runtime=10,
    params:
        cfg=config_slice("report"),
        config_hash=STUDY.hash,
        out_dir="reports/{study}",
        code=code_version(
            "lorascope.report", *registry.modules("report"), data=["reference/*.yaml"]
        ),
    script:
        "../scripts/report.py"
